//! `seqrec bench`: benchmarks that print a table and write JSON.

use anyhow::Result;
use clap::Subcommand;

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {}
}
