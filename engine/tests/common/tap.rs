//! Tap clients written from the frames up.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};

/// A tap client that never reads, written from the frames up so it is
/// exactly that: its HTTP/2 stream window is 100 bytes and it never opens
/// it further. Its tap matches every request (`extract` as given).
pub fn never_reading_tap(
    tap: SocketAddr,
    extract: Option<linkerd2_proxy_api::tap::observe_request::Extract>,
) -> TcpStream {
    use prost::Message as _;
    let mut c = super::connect(tap);
    // Preface; SETTINGS: INITIAL_WINDOW_SIZE (4) = 100.
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    c.write_all(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 100])
        .unwrap();
    // HEADERS (stream 1, END_HEADERS), HPACK literals: POST, http,
    // the path, the authority, content-type, te.
    let lit = |name_index: u8, value: &str| {
        [&[name_index, value.len() as u8][..], value.as_bytes()].concat()
    };
    let new = |name: &str, value: &str| {
        [
            &[0, name.len() as u8][..],
            name.as_bytes(),
            &[value.len() as u8],
            value.as_bytes(),
        ]
        .concat()
    };
    let block = [
        vec![0x83, 0x86],
        lit(4, "/io.linkerd.proxy.tap.Tap/Observe"),
        lit(1, "tap.test"),
        new("content-type", "application/grpc"),
        new("te", "trailers"),
    ]
    .concat();
    let frame = |kind: u8, flags: u8, payload: &[u8]| {
        let len = (payload.len() as u32).to_be_bytes();
        [
            &[len[1], len[2], len[3], kind, flags, 0, 0, 0, 1][..],
            payload,
        ]
        .concat()
    };
    c.write_all(&frame(1, 4, &block)).unwrap();
    let req = linkerd2_proxy_api::tap::ObserveRequest {
        limit: 100_000,
        r#match: Some(linkerd2_proxy_api::tap::observe_request::Match {
            r#match: Some(
                linkerd2_proxy_api::tap::observe_request::r#match::Match::Destination(
                    linkerd2_proxy_api::tap::observe_request::r#match::Tcp {
                        r#match: Some(
                            linkerd2_proxy_api::tap::observe_request::r#match::tcp::Match::Ports(
                                linkerd2_proxy_api::tap::observe_request::r#match::tcp::PortRange {
                                    min: 1,
                                    max: 65535,
                                },
                            ),
                        ),
                    },
                ),
            ),
        }),
        extract,
    };
    let msg = req.encode_to_vec();
    let grpc = [&[0][..], &(msg.len() as u32).to_be_bytes(), &msg].concat();
    c.write_all(&frame(0, 1, &grpc)).unwrap();
    c
}
