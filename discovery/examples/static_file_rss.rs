//! Parses a static discovery file and prints how many services it holds, so
//! its peak memory can be measured from outside:
//!
//! ```sh
//! cargo run --release -p ringmesh-discovery --example static_file_rss -- --generate 200000 /tmp/big.toml
//! /usr/bin/time -v target/release/examples/static_file_rss /tmp/big.toml   # "Maximum resident set size"
//! ```
//!
//! `--generate N PATH` writes a file of N services of one endpoint each
//! instead (about 68 bytes a service: 200 000 make 13.7 MB, the size of the
//! file issue 13 measured).

use std::io::Write;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, n, path] if flag == "--generate" => {
            let n: u32 = n.parse()?;
            let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
            for i in 0..n {
                let (a, b) = (i >> 8 & 0xff, i & 0xff);
                writeln!(
                    out,
                    "[[service]]\nname = \"s{i}.test:80\"\nendpoints = [\"10.1.{a}.{b}:80\"]"
                )?;
            }
            out.flush()?;
        }
        [path] => {
            let text = std::fs::read_to_string(path)?;
            let services = ringmesh_discovery::static_file::parse(&text)?;
            println!("{} services", services.len());
        }
        _ => anyhow::bail!("usage: static_file_rss FILE | --generate N FILE"),
    }
    Ok(())
}
