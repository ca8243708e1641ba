//! spool against other implementations: async-tungstenite (no compression) and Python
//! `websockets` (with permessage-deflate), in both roles, on both shells.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use async_tungstenite::tungstenite::Message as TMessage;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::protocol::frame::Frame;
use async_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use futures_lite::StreamExt;
use spool_core::ws::{self, Message};
use spool_tests::{EchoServer, Shell, python, tests_dir};

const SIXTEEN_MIB: usize = 16 << 20;

fn configs() -> [(&'static str, ws::Config); 2] {
    [
        (
            "deflate offered",
            ws::Config {
                deflate: Some(ws::DeflateConfig::default()),
                ..ws::Config::default()
            },
        ),
        ("deflate off (the default)", ws::Config::default()),
    ]
}

fn tungstenite_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(SIXTEEN_MIB))
}

fn big_payload() -> Vec<u8> {
    (0..SIXTEEN_MIB).map(|i| (i % 251) as u8).collect()
}

/// async-tungstenite's client against both spool servers: text, binary, fragmented, 16 MiB.
#[test]
fn tungstenite_client_against_spool_servers() {
    for shell in [Shell::Smol, Shell::Std] {
        for (label, config) in configs() {
            let server = EchoServer::start(shell, config);
            let url = server.url();
            smol::block_on(async {
                let addr = url.trim_start_matches("ws://").to_string();
                let tcp = smol::net::TcpStream::connect(&addr).await.unwrap();
                let (mut ws, _) = async_tungstenite::client_async_with_config(
                    url.as_str(),
                    tcp,
                    Some(tungstenite_config()),
                )
                .await
                .unwrap();
                let mut expect_echo = async |sent: TMessage, want: TMessage| {
                    ws.send(sent).await.unwrap();
                    let got = ws.next().await.unwrap().unwrap();
                    assert_eq!(got, want, "{shell:?} {label}");
                };
                expect_echo(TMessage::text("hello"), TMessage::text("hello")).await;
                expect_echo(
                    TMessage::binary(vec![0u8, 1, 2, 255]),
                    TMessage::binary(vec![0u8, 1, 2, 255]),
                )
                .await;
                let big = big_payload();
                expect_echo(TMessage::binary(big.clone()), TMessage::binary(big)).await;

                // Fragmented: three frames, a ping between the second and third.
                ws.send(TMessage::Frame(Frame::message(
                    "frag",
                    OpCode::Data(Data::Text),
                    false,
                )))
                .await
                .unwrap();
                ws.send(TMessage::Frame(Frame::message(
                    "ment",
                    OpCode::Data(Data::Continue),
                    false,
                )))
                .await
                .unwrap();
                ws.send(TMessage::Ping(vec![7u8].into())).await.unwrap();
                ws.send(TMessage::Frame(Frame::message(
                    "ed",
                    OpCode::Data(Data::Continue),
                    true,
                )))
                .await
                .unwrap();
                let mut got = Vec::new();
                while got.len() < 2 {
                    got.push(ws.next().await.unwrap().unwrap());
                }
                assert_eq!(
                    got,
                    [
                        TMessage::Pong(vec![7u8].into()),
                        TMessage::text("fragmented")
                    ],
                    "{shell:?} {label}"
                );
                ws.close(None).await.unwrap();
                // The server answers the close and hangs up.
                while let Some(Ok(m)) = ws.next().await {
                    assert!(matches!(m, TMessage::Close(_)), "{m:?}");
                }
            });
        }
    }
}

/// An async-tungstenite echo server; it sends each message back fragmented in two frames when
/// the text starts with "frag", so spool's client reassembles a peer's fragments.
fn tungstenite_server() -> (String, smol::Task<()>) {
    let listener = smol::block_on(smol::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let task = smol::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            smol::spawn(async move {
                let Ok(mut ws) =
                    async_tungstenite::accept_async_with_config(tcp, Some(tungstenite_config()))
                        .await
                else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    let result = match m {
                        TMessage::Text(t) if t.starts_with("frag") => {
                            let (a, b) = t.split_at(4);
                            let first =
                                Frame::message(a.to_string(), OpCode::Data(Data::Text), false);
                            let second =
                                Frame::message(b.to_string(), OpCode::Data(Data::Continue), true);
                            match ws.send(TMessage::Frame(first)).await {
                                Ok(()) => ws.send(TMessage::Frame(second)).await,
                                Err(e) => Err(e),
                            }
                        }
                        m @ (TMessage::Text(_) | TMessage::Binary(_)) => ws.send(m).await,
                        _ => Ok(()),
                    };
                    if result.is_err() {
                        break;
                    }
                }
            })
            .detach();
        }
    });
    (url, task)
}

#[test]
fn spool_clients_against_a_tungstenite_server() {
    let (url, _server) = tungstenite_server();
    for (label, config) in configs() {
        // The smol client.
        smol::block_on(async {
            let mut c = spool_smol::Client::connect(&url, config.clone())
                .await
                .unwrap();
            for m in [
                Message::text("hello"),
                Message::binary(vec![1u8, 2, 3]),
                Message::binary(big_payload()),
            ] {
                c.send(m.clone()).await.unwrap();
                assert_eq!(c.recv().await.unwrap(), m, "smol {label}");
            }
            c.send(Message::text("fragmented")).await.unwrap();
            assert_eq!(
                c.recv().await.unwrap(),
                Message::text("fragmented"),
                "smol {label}"
            );
            c.close(1000, "").await.unwrap();
        });
        // The std client, on this thread while the tungstenite server runs on smol's.
        let url = url.clone();
        let config = config.clone();
        std::thread::spawn(move || {
            let mut c = spool_std::Client::connect(&url, config).unwrap();
            for m in [
                Message::text("hello"),
                Message::binary(vec![1u8, 2, 3]),
                Message::binary(big_payload()),
            ] {
                c.send(m.clone()).unwrap();
                assert_eq!(c.recv().unwrap(), m, "std {label}");
            }
            c.send(Message::text("fragmented")).unwrap();
            assert_eq!(
                c.recv().unwrap(),
                Message::text("fragmented"),
                "std {label}"
            );
            c.close(1000, "").unwrap();
        })
        .join()
        .unwrap();
    }
}

/// Python `websockets` negotiates permessage-deflate with spool's servers.
#[test]
fn python_client_with_compression_against_spool_servers() {
    for shell in [Shell::Smol, Shell::Std] {
        for (label, config) in configs() {
            let server = EchoServer::start(shell, config.clone());
            let out = Command::new(python())
                .arg(tests_dir().join("peers/py_client.py"))
                .arg(server.url())
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{shell:?} {label}: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let want = format!(
                "OK deflate={}",
                if config.deflate.is_some() {
                    "True"
                } else {
                    "False"
                }
            );
            assert_eq!(stdout.trim(), want, "{shell:?} {label}");
        }
    }
}

/// spool's clients negotiate permessage-deflate with a Python `websockets` server.
#[test]
fn spool_clients_with_compression_against_a_python_server() {
    let mut child = Command::new(python())
        .arg(tests_dir().join("peers/py_echo_server.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .expect("the peer prints its port")
        .to_string();
    let url = format!("ws://127.0.0.1:{port}/");
    let long = "compressible ".repeat(100_000);
    for (label, config) in configs() {
        let want = if config.deflate.is_some() {
            "extensions:permessage-deflate"
        } else {
            "extensions:"
        };
        smol::block_on(async {
            let mut c = spool_smol::Client::connect(&url, config.clone())
                .await
                .unwrap();
            assert_eq!(c.recv().await.unwrap(), Message::text(want), "smol {label}");
            for m in [
                Message::text("hi"),
                Message::text(long.clone()),
                Message::binary(vec![9u8; 100_000]),
            ] {
                c.send(m.clone()).await.unwrap();
                assert_eq!(c.recv().await.unwrap(), m, "smol {label}");
            }
            c.close(1000, "").await.unwrap();
        });
        let mut c = spool_std::Client::connect(&url, config.clone()).unwrap();
        assert_eq!(c.recv().unwrap(), Message::text(want), "std {label}");
        c.send(Message::text(long.clone())).unwrap();
        assert_eq!(
            c.recv().unwrap(),
            Message::text(long.clone()),
            "std {label}"
        );
        c.close(1000, "").unwrap();
    }
    // Closing its stdin stops the peer.
    child.stdin.take().unwrap().write_all(b"").unwrap();
    child.wait().unwrap();
}
