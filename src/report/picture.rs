//! Pictures of a subnet's /28 map: a compact text grid for the terminal (one character per
//! /28, 64 to a row) and an SVG image, colour-coded by state, with a legend.

use std::fmt::Write;

use super::subnet_map::{BlockState, SubnetMap};

/// Blocks per row, in both pictures: a /22 is one row, a /16 sixty-four.
pub const PER_ROW: usize = 64;

/// The legend line of the text grid.
pub fn legend() -> String {
    BlockState::ALL
        .iter()
        .map(|s| format!("{} {}", s.glyph(), s.label()))
        .collect::<Vec<_>>()
        .join("   ")
}

/// The text grid: each row starts with its first address.
pub fn text_grid(map: &SubnetMap) -> String {
    let mut out = String::new();
    for (r, row) in map.blocks.chunks(PER_ROW).enumerate() {
        let first = map.block(r * PER_ROW).network();
        let _ = write!(out, "  {first:<15} ");
        out.extend(row.iter().map(|s| s.glyph()));
        out.push('\n');
    }
    out
}

fn colour(s: BlockState) -> &'static str {
    match s {
        BlockState::Free => "#3cb44b",
        BlockState::FreeReserved => "#4aa3df",
        BlockState::Allocated => "#7f7f7f",
        BlockState::Fragmented => "#f58231",
        BlockState::Explicit => "#911eb4",
        BlockState::Reserved => "#222222",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The SVG picture of `map`, titled `title`.
pub fn svg(map: &SubnetMap, title: &str) -> String {
    const CELL: usize = 12;
    const LEFT: usize = 110;
    const TOP: usize = 40;
    let rows = map.blocks.len().div_ceil(PER_ROW);
    let cols = map.blocks.len().min(PER_ROW);
    let grid_w = cols * CELL;
    let legend_y = TOP + rows * CELL + 24;
    let width = (LEFT + grid_w + 20).max(LEFT + 3 * 220);
    let height = legend_y + 2 * 20 + 10;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" font-family=\"monospace\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"14\" font-weight=\"bold\">{}</text>\n",
        escape(title)
    );
    for r in 0..rows {
        let first = map.block(r * PER_ROW).network();
        let _ = writeln!(
            s,
            "<text x=\"10\" y=\"{}\">{first}</text>",
            TOP + r * CELL + CELL - 2
        );
    }
    for (i, b) in map.blocks.iter().enumerate() {
        let (r, c) = (i / PER_ROW, i % PER_ROW);
        let _ = writeln!(
            s,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"><title>{} {}</title></rect>",
            LEFT + c * CELL,
            TOP + r * CELL,
            CELL - 1,
            CELL - 1,
            colour(*b),
            map.block(i),
            b.label()
        );
    }
    for (k, st) in BlockState::ALL.iter().enumerate() {
        let (x, y) = (10 + (k % 3) * 240, legend_y + (k / 3) * 20);
        let n = map.blocks.iter().filter(|b| *b == st).count();
        let _ = writeln!(
            s,
            "<rect x=\"{x}\" y=\"{}\" width=\"11\" height=\"11\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"{}\">{} ({n})</text>",
            y - 10,
            colour(*st),
            x + 16,
            y,
            escape(st.label())
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pictures_show_every_block() {
        let map = SubnetMap::build("10.0.0.0/21".parse().unwrap(), &[], &[]);
        let g = text_grid(&map);
        assert_eq!(g.lines().count(), 2);
        assert!(g.starts_with("  10.0.0.0        -....."), "{g}");
        assert!(g.lines().nth(1).unwrap().starts_with("  10.0.4.0 "), "{g}");
        let svg = svg(&map, "subnet-1 <test>");
        assert_eq!(svg.matches("<rect x=").count(), 128 + BlockState::ALL.len());
        assert!(svg.contains("subnet-1 &lt;test&gt;"));
        assert!(svg.contains("free (126)"));
    }
}
