#![deny(rust_2018_idioms)]
