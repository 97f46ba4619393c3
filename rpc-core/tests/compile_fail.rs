//! Unsupported service signatures are compile errors at the offending span.

#[test]
fn unsupported_signatures_are_rejected() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/compile_fail/*.rs");
}
