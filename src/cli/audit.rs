//! `pgid audit verify FILE…`: checks the hash chain, across rotated files in the order given.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use crate::audit::chain;

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Verify the hash chain: exit 0 if intact, 1 with the first broken line.
    Verify {
        /// Audit files, oldest first (a rotated file's chain continues in the next).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Hash the first file's chain starts from (default: a new chain).
        #[arg(long, default_value = chain::GENESIS)]
        start: String,
    },
}

pub fn run(cmd: AuditCommand) -> anyhow::Result<u8> {
    let AuditCommand::Verify { files, start } = cmd;
    let mut prev = start;
    let mut records = 0usize;
    for file in &files {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let text = String::from_utf8_lossy(&bytes);
        if !text.is_empty() && !text.ends_with('\n') {
            let line = text.lines().count();
            eprintln!(
                "{}:{line}: record is incomplete (no line end)",
                file.display()
            );
            return Ok(1);
        }
        match chain::verify(text.lines(), &prev) {
            Ok(last) => {
                records += text.lines().count();
                prev = last;
            }
            Err((index, why)) => {
                eprintln!("{}:{}: {why}", file.display(), index + 1);
                return Ok(1);
            }
        }
    }
    println!(
        "ok: {records} records in {} file{}, chain intact (last hash {prev})",
        files.len(),
        if files.len() == 1 { "" } else { "s" }
    );
    Ok(0)
}
