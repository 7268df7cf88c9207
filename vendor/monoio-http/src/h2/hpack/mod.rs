mod decoder;
mod encoder;
pub(crate) mod header;
pub(crate) mod huffman;
mod table;

#[cfg(test)]
mod test;

pub use self::{
    decoder::{Decoder, DecoderError, NeedMore},
    encoder::{encode_static_field, encode_static_pseudo, encode_static_pseudo_literal, Encoder},
    header::{BytesStr, Header},
};
