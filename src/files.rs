//! File-system helpers shared by the key and store layers.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// Creates `dir` (and its parents) readable only by the owner.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
