//! `image-url-server`: the image-url server and its command-line tools.
//!
//! The binary stays thin: it parses arguments, reads the environment and calls into the
//! library crates. Subcommands:
//!
//! - `serve` — run the HTTP server;
//! - `presign` — print a presigned COS URL, like `coscli signurl`;
//! - `sign-link` — print a signed link to the server's own API (docs/security.md);
//! - `dev-origin` — serve a directory as a local COS-compatible bucket;
//! - `demo` — the dev origin with sample images and the server in one process, with a
//!   page of `<smart-image>` elements.

use std::process::ExitCode;

use clap::Parser;

mod allocator;
mod cli;
mod config;
mod demo;
mod dev_origin_cmd;
mod logging;
mod presign;
mod serve;
mod sign_link;

/// mimalloc rather than glibc's allocator: a redirect makes about a dozen short-lived
/// allocations (actix's boxed futures, header values, the key), and glibc's `free`
/// alone cost about 100 instructions each — a sixth of the server's own work per
/// request (docs/performance.md, issue 16). Asked for plain blocks where their
/// alignment allows (`allocator`).
#[global_allocator]
static ALLOCATOR: allocator::Allocator = allocator::Allocator;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help and --version: print and succeed.
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            // One clear line, not clap's usage block.
            let rendered = err.render().to_string();
            let line: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("{}", line.join(" "));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        cli::Command::Presign(args) => presign::run(&args, &|name| std::env::var(name).ok()),
        cli::Command::SignLink(args) => sign_link::run(&args, cos_sign::unix_now()),
        cli::Command::Serve(args) => serve::run(&args).map(|()| String::new()),
        cli::Command::DevOrigin(args) => dev_origin_cmd::run(&args).map(|()| String::new()),
        cli::Command::Demo(args) => demo::run(&args).map(|()| String::new()),
    };
    match result {
        Ok(output) => {
            if !output.is_empty() {
                println!("{output}");
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
