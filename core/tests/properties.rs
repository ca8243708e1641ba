//! Properties of the WebSocket machine over generated input (quickcheck).

use bytes::Bytes;
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use spool_core::ws::{Config, Connection, Event, Message, Outbound};

const REQUEST: &str = "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn open_server() -> Connection {
    let mut ws = Connection::server(Config {
        deflate: None,
        ..Config::default()
    })
    .unwrap();
    ws.handle(Event::Receive {
        now_ms: 0,
        bytes: REQUEST.into(),
    });
    ws.handle(Event::Accept { now_ms: 0 });
    ws
}

/// A message a client could send, as generated input.
#[derive(Clone, Debug)]
struct Msg {
    text: bool,
    payload: Vec<u8>,
    /// How many frames it is split into (1 = unfragmented).
    fragments: usize,
    mask: [u8; 4],
}

impl Arbitrary for Msg {
    fn arbitrary(g: &mut Gen) -> Msg {
        let text = bool::arbitrary(g);
        let payload = if text {
            String::arbitrary(g).into_bytes()
        } else {
            let len = usize::arbitrary(g) % 300;
            (0..len).map(|_| u8::arbitrary(g)).collect()
        };
        Msg {
            text,
            payload,
            fragments: 1 + usize::arbitrary(g) % 4,
            mask: <[u8; 4]>::arbitrary(g),
        }
    }
}

impl Msg {
    fn message(&self) -> Message {
        if self.text {
            Message::text(String::from_utf8(self.payload.clone()).unwrap())
        } else {
            Message::Binary(self.payload.clone().into())
        }
    }

    /// The client's frames for this message, built by hand (not by the encoder under test).
    fn wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let size = self.payload.len().div_ceil(self.fragments).max(1);
        let pieces: Vec<&[u8]> = if self.payload.is_empty() {
            vec![&[]]
        } else {
            self.payload.chunks(size).collect()
        };
        for (i, piece) in pieces.iter().enumerate() {
            let fin = i + 1 == pieces.len();
            let opcode = if i > 0 {
                0
            } else if self.text {
                1
            } else {
                2
            };
            out.push((fin as u8) << 7 | opcode);
            match piece.len() {
                n if n < 126 => out.push(0x80 | n as u8),
                n => {
                    out.push(0x80 | 126);
                    out.extend_from_slice(&(n as u16).to_be_bytes());
                }
            }
            out.extend_from_slice(&self.mask);
            out.extend(piece.iter().enumerate().map(|(j, b)| b ^ self.mask[j % 4]));
        }
        out
    }
}

fn delivered(out: &[Outbound]) -> Vec<Message> {
    out.iter()
        .filter_map(|o| match o {
            Outbound::Deliver(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_stream_split_anywhere_decodes_to_the_same_messages() {
    fn prop(msgs: Vec<Msg>, cuts: Vec<usize>) -> TestResult {
        let wire: Vec<u8> = msgs.iter().flat_map(Msg::wire).collect();
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        points.sort_unstable();
        let mut ws = open_server();
        let mut out = Vec::new();
        let mut start = 0;
        for p in points.into_iter().chain([wire.len()]) {
            out.extend(ws.handle(Event::Receive {
                now_ms: 1,
                bytes: Bytes::copy_from_slice(&wire[start..p]),
            }));
            start = p;
        }
        let expected: Vec<Message> = msgs.iter().map(Msg::message).collect();
        TestResult::from_bool(delivered(&out) == expected && out.len() == expected.len())
    }
    QuickCheck::new()
        .tests(500)
        .quickcheck(prop as fn(Vec<Msg>, Vec<usize>) -> TestResult);
}

/// What a client might send between messages: a ping, or a frame the server must reject.
#[derive(Clone, Debug)]
enum Item {
    Message(Msg),
    Ping(Vec<u8>),
    /// A text frame whose payload is not UTF-8 (close 1007).
    BadText,
    /// A binary frame with RSV2 set (close 1002).
    Reserved,
}

impl Arbitrary for Item {
    fn arbitrary(g: &mut Gen) -> Item {
        match u8::arbitrary(g) % 16 {
            0 => Item::Ping((0..usize::arbitrary(g) % 20).map(|_| 7).collect()),
            1 => Item::BadText,
            2 => Item::Reserved,
            _ => Item::Message(Msg::arbitrary(g)),
        }
    }
}

impl Item {
    fn wire(&self) -> Vec<u8> {
        // Masked with a zero key, so the payload bytes are as written.
        match self {
            Item::Message(m) => m.wire(),
            Item::Ping(p) => [&[0x89, 0x80 | p.len() as u8, 0, 0, 0, 0][..], p].concat(),
            Item::BadText => vec![0x81, 0x82, 0, 0, 0, 0, 0xC3, 0x28],
            Item::Reserved => vec![0xA2, 0x81, 0, 0, 0, 0, 1],
        }
    }
}

/// The messages delivered and how the connection ended.
fn outcome(out: &[Outbound]) -> (Vec<Message>, Vec<(u16, bool)>) {
    let closes = out
        .iter()
        .filter_map(|o| match o {
            Outbound::Closed(info) => Some((info.code, info.clean)),
            _ => None,
        })
        .collect();
    (delivered(out), closes)
}

/// A read that holds many whole messages takes the receive path's fast run; one that holds
/// pieces takes the general path. Both must deliver the same messages, answer pings alike and
/// fail on the same frame with the same code.
#[test]
fn whole_reads_and_piecemeal_reads_agree() {
    fn prop(items: Vec<Item>, cuts: Vec<usize>) -> bool {
        let wire: Vec<u8> = items.iter().flat_map(Item::wire).collect();
        let feed = |pieces: Vec<&[u8]>| {
            let mut ws = open_server();
            let mut out = Vec::new();
            for piece in pieces {
                out.extend(ws.handle(Event::Receive {
                    now_ms: 1,
                    bytes: Bytes::copy_from_slice(piece),
                }));
            }
            // A failure deferred behind delivered messages falls due at once: the shell ticks.
            out.extend(ws.handle(Event::Tick { now_ms: 1 }));
            out.extend(ws.handle(Event::TransportClosed { now_ms: 2 }));
            out
        };
        let whole = feed(vec![&wire[..]]);
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        let mut start = 0;
        let mut pieces = Vec::new();
        for p in points {
            pieces.push(&wire[start..p]);
            start = p;
        }
        let piecemeal = feed(pieces);
        let bytewise = feed(wire.chunks(1).collect());
        let pongs = |out: &[Outbound]| {
            out.iter()
                .filter(|o| matches!(o, Outbound::Transmit(t) if t.starts_with(&[0x8A])))
                .count()
        };
        outcome(&whole) == outcome(&piecemeal)
            && outcome(&whole) == outcome(&bytewise)
            && pongs(&whole) == pongs(&bytewise)
    }
    QuickCheck::new()
        .tests(500)
        .quickcheck(prop as fn(Vec<Item>, Vec<usize>) -> bool);
}

/// A shell that keeps its read buffer hands the core slices (`handle_read`); one that gives the
/// bytes away hands it `Event::Receive`. Over any mix of messages, pings and bad frames, cut
/// anywhere, both must give the same outbounds, byte for byte, in the same order.
#[test]
fn kept_reads_and_given_reads_give_the_same_outbounds() {
    fn prop(items: Vec<Item>, cuts: Vec<usize>, big: bool) -> bool {
        let mut items = items;
        if big {
            // Payloads past the 64-byte mark take the wide masking loops.
            items.push(Item::Message(Msg {
                text: false,
                payload: (0..1000u32).map(|i| (i * 7) as u8).collect(),
                fragments: 1,
                mask: [1, 2, 3, 4],
            }));
        }
        let wire: Vec<u8> = items.iter().flat_map(Item::wire).collect();
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        let (mut given, mut kept) = (open_server(), open_server());
        let (mut given_out, mut kept_out) = (Vec::new(), Vec::new());
        let mut start = 0;
        for (i, p) in points.into_iter().enumerate() {
            let now_ms = i as u64;
            let bytes = Bytes::copy_from_slice(&wire[start..p]);
            given.handle_into(Event::Receive { now_ms, bytes }, &mut given_out);
            kept.handle_read(now_ms, &wire[start..p], &mut kept_out);
            start = p;
        }
        let end = |ws: &mut Connection, out: &mut Vec<Outbound>| {
            ws.handle_into(Event::Tick { now_ms: 1_000 }, out);
            ws.handle_into(Event::TransportClosed { now_ms: 1_001 }, out);
        };
        end(&mut given, &mut given_out);
        end(&mut kept, &mut kept_out);
        given_out == kept_out
    }
    QuickCheck::new()
        .tests(1000)
        .quickcheck(prop as fn(Vec<Item>, Vec<usize>, bool) -> bool);
}

#[test]
fn what_a_client_encodes_a_server_decodes() {
    // Encoder and decoder of the core itself, through a client and a server machine.
    fn prop(msgs: Vec<Msg>, deflate: bool, seed: u64) -> bool {
        let config = if deflate {
            Config::default()
        } else {
            Config {
                deflate: None,
                ..Config::default()
            }
        };
        let request = spool_core::ws::ClientRequest {
            url: spool_core::ws::Url::parse("ws://h/").unwrap(),
            key: [9; 16],
            mask_seed: seed,
            headers: vec![],
        };
        let mut client = Connection::client(config.clone(), request).unwrap();
        let mut server = Connection::server(config).unwrap();
        let pump = |from: Vec<Outbound>, to: &mut Connection| -> Vec<Outbound> {
            from.into_iter()
                .flat_map(|o| match o {
                    Outbound::Transmit(t) => to.handle(Event::Receive {
                        now_ms: 1,
                        bytes: t.into_bytes(),
                    }),
                    _ => vec![],
                })
                .collect()
        };
        let request = client.handle(Event::Open { now_ms: 0 });
        pump(request, &mut server);
        let answer = server.handle(Event::Accept { now_ms: 0 });
        pump(answer, &mut client);
        let mut got = Vec::new();
        for m in &msgs {
            let wire = client.handle(Event::Send {
                now_ms: 1,
                message: m.message(),
            });
            got.extend(delivered(&pump(wire, &mut server)));
        }
        got == msgs.iter().map(Msg::message).collect::<Vec<_>>()
    }
    QuickCheck::new()
        .tests(300)
        .quickcheck(prop as fn(Vec<Msg>, bool, u64) -> bool);
}

#[test]
fn any_bytes_yield_messages_or_one_close_never_a_panic() {
    fn prop(chunks: Vec<Vec<u8>>, masked_prefix: bool) -> bool {
        let mut ws = open_server();
        let mut out = Vec::new();
        if masked_prefix {
            // Start with a valid frame so the fuzz reaches deeper states.
            out.extend(ws.handle(Event::Receive {
                now_ms: 1,
                bytes: vec![0x01, 0x81, 0, 0, 0, 0, b'a'].into(),
            }));
        }
        for c in chunks {
            out.extend(ws.handle(Event::Receive {
                now_ms: 2,
                bytes: c.into(),
            }));
        }
        out.extend(ws.handle(Event::TransportClosed { now_ms: 3 }));
        let closes = out
            .iter()
            .filter(|o| matches!(o, Outbound::Closed(_)))
            .count();
        let only_known = out.iter().all(|o| {
            matches!(
                o,
                Outbound::Deliver(_)
                    | Outbound::Transmit(_)
                    | Outbound::Closed(_)
                    | Outbound::Disconnect
            )
        });
        closes == 1 && only_known
    }
    QuickCheck::new()
        .tests(2000)
        .quickcheck(prop as fn(Vec<Vec<u8>>, bool) -> bool);
}
