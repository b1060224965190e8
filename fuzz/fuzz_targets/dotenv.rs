//! Fuzzes `coffer_core::dotenv::parse`: it must never panic, and whatever it accepts must come
//! back unchanged when rendered as a dotenv file with double-quoted values and parsed again.
#![no_main]

use coffer_core::dotenv::parse;
use libfuzzer_sys::fuzz_target;

/// Renders `value` as a double-quoted dotenv value, escaping `\`, `"`, `$`, CR and LF.
/// Works on bytes: the only changes are ASCII, so valid UTF-8 stays valid.
fn render_value(value: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in value {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'$' => out.extend_from_slice(b"\\$"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b => out.push(b),
        }
    }
    out.push(b'"');
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(pairs) = parse(input) else {
        return;
    };

    let mut rendered = Vec::new();
    for (key, value) in &pairs {
        assert!(!key.is_empty(), "empty key");
        assert!(
            std::str::from_utf8(value.expose_bytes()).is_ok(),
            "value is not UTF-8"
        );
        rendered.extend_from_slice(key.as_bytes());
        rendered.push(b'=');
        render_value(value.expose_bytes(), &mut rendered);
        rendered.push(b'\n');
    }
    let rendered = std::str::from_utf8(&rendered).expect("rendering keeps UTF-8");
    let again = parse(rendered).expect("a re-rendered file parses");
    assert_eq!(again.len(), pairs.len(), "pair count changed");
    for ((k1, v1), (k2, v2)) in pairs.iter().zip(&again) {
        assert_eq!(k1, k2, "key changed");
        assert!(
            v1.expose_bytes() == v2.expose_bytes(),
            "value of {k1} changed"
        );
    }
});
