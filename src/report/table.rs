//! Plain text tables for the reports: a header, rows, columns padded to their widest cell;
//! numbers right-aligned.

/// A table being built.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are blank).
    pub fn row(&mut self, cells: Vec<String>) -> &mut Self {
        self.rows.push(cells);
        self
    }

    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table, indented by `indent` spaces.
    pub fn render(&self, indent: usize) -> String {
        let cols = self.header.len();
        let cell = |r: &Vec<String>, c: usize| r.get(c).cloned().unwrap_or_default();
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| cell(r, c).chars().count())
                    .chain([self.header[c].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let numeric = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|ch| ch.is_ascii_digit() || matches!(ch, '.' | '-' | '%' | ',' | '+'))
        };
        let line = |r: &Vec<String>| {
            let mut out = " ".repeat(indent);
            for (c, w) in widths.iter().enumerate() {
                let v = cell(r, c);
                let pad = w - v.chars().count();
                if c > 0 {
                    out.push_str("  ");
                }
                if numeric(&v) {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(&v);
                } else {
                    out.push_str(&v);
                    if c + 1 < cols {
                        out.push_str(&" ".repeat(pad));
                    }
                }
            }
            out.trim_end().to_owned() + "\n"
        };
        let mut s = line(&self.header);
        for r in &self.rows {
            s.push_str(&line(r));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let mut t = Table::new(&["subnet", "free"]);
        t.row(vec!["subnet-0abc".into(), "5".into()])
            .row(vec!["s".into(), "120".into()]);
        assert_eq!(
            t.render(2),
            "  subnet       free\n  subnet-0abc     5\n  s             120\n"
        );
    }
}
