//! deploy/ checked offline: the conflist parsed by the plugin's own config parser.

#[test]
fn conflist_is_parsed_by_the_plugins_own_parser() {
    let bytes = std::fs::read("deploy/10-prefixd.conflist").unwrap();
    assert_eq!(prefixd::cni::check_conflist(&bytes).unwrap(), 1);
    // And it would refuse a broken one.
    let broken = String::from_utf8(bytes)
        .unwrap()
        .replace("\"30s\"", "\"soon\"");
    assert!(prefixd::cni::check_conflist(broken.as_bytes()).is_err());
}
