//! The README's Rust snippets compile as written: each appears, line for line, in
//! `src/bin/readme.rs`, which the build compiles.

/// Lines of `text` without surrounding whitespace, blank lines and the program's
/// `#[rustfmt::skip]` markers (which keep the snippets' layout) dropped.
fn lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && *line != "#[rustfmt::skip]")
        .collect()
}

/// The Rust code blocks of a Markdown text.
fn rust_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim()) {
            (None, "```rust") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn readme_snippets_are_in_the_readme_example() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/../README.md")).unwrap();
    let program = std::fs::read_to_string(format!("{root}/src/bin/readme.rs")).unwrap();
    let program = lines(&program);
    let blocks = rust_blocks(&readme);
    assert!(blocks.len() >= 5, "found only {} rust blocks", blocks.len());
    for block in blocks {
        let block = lines(&block);
        let found = program
            .windows(block.len())
            .any(|window| window == block.as_slice());
        assert!(
            found,
            "this README snippet is not in examples/src/bin/readme.rs as written \
             (update both together):\n{}",
            block.join("\n")
        );
    }
}
