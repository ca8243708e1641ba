//! The load generators, each one process on one thread over mio, every connection a
//! spool-core client: `echo` (closed-loop round trips), `fanout` (Phoenix subscribers and a
//! publisher) and `hold` (idle connections that answer pings). Each prints one line of
//! `key=value` figures that the driver reads. Every loop is bounded in time.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::{Events, Poll, Token};
use spool_core::ws::{Message, Outbound, Url};

use crate::client::{Client, source_addr};
use crate::procfs;
use crate::{Flags, flag};

fn addr_url(flags: &Flags, path: &str) -> Result<(SocketAddr, Url), String> {
    let addr: SocketAddr = flag(flags, "addr", "127.0.0.1:9001".parse().expect("addr"))?;
    let url = Url::parse(&format!("ws://{addr}{path}")).map_err(|e| e.to_string())?;
    Ok((addr, url))
}

fn ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

// ---------------------------------------------------------------------------------------------

/// `echo --addr A --conns 100 --len 1024 --secs 5 --warmup 1 --pid PID --process N`:
/// every connection sends a binary message and waits for its echo, over and over.
pub fn echo(flags: &Flags) -> Result<(), String> {
    let (addr, url) = addr_url(flags, "/")?;
    let conns: usize = flag(flags, "conns", 100)?;
    let len: usize = flag(flags, "len", 1024)?;
    let secs: f64 = flag(flags, "secs", 5.0)?;
    let warmup: f64 = flag(flags, "warmup", 1.0)?;
    let pid: u32 = flag(flags, "pid", 0)?;
    let process: u32 = flag(flags, "process", 0)?;
    let start = Instant::now();
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut clients = Vec::with_capacity(conns);
    for i in 0..conns {
        let c = Client::connect(
            poll.registry(),
            Token(i),
            source_addr(process, i),
            addr,
            &url,
            i as u64 + 1,
        )
        .map_err(|e| format!("connect {i}: {e}"))?;
        clients.push(c);
    }
    let payload = Bytes::from(vec![b'x'; len]);
    let mut sent_at = vec![start; conns];
    let mut latencies: Vec<u64> = Vec::with_capacity(1 << 20);
    let (mut scratch, mut app) = (Vec::new(), Vec::new());
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = Events::with_capacity(1024);
    let mut opened = 0;
    let connect_deadline = start + Duration::from_secs(30);
    // When the window began: the time, the server's and our CPU, its context switches and
    // read/write calls.
    type Start = (Instant, procfs::CpuTime, Duration, u64, (u64, u64));
    let mut measure: Option<Start> = None;
    let mut begin_at: Option<Instant> = None;
    let mut count = 0u64;
    let mut failed = 0usize;
    let result = loop {
        let now = Instant::now();
        if begin_at.is_none() && (opened + failed == conns || now > connect_deadline) {
            if opened == 0 {
                return Err(format!("no connection to {addr} opened"));
            }
            begin_at = Some(now + Duration::from_secs_f64(warmup));
        }
        if let Some(at) = begin_at
            && measure.is_none()
            && now >= at
        {
            measure = Some((
                now,
                procfs::cpu_times(pid),
                procfs::cpu(std::process::id()),
                procfs::context_switches(pid),
                procfs::syscalls(pid),
            ));
        }
        if let Some((t0, cpu0, self0, ctx0, io0)) = measure
            && now >= t0 + Duration::from_secs_f64(secs)
        {
            let window = now - t0;
            let cpu = procfs::cpu_times(pid).since(cpu0);
            let own = procfs::cpu(std::process::id()).saturating_sub(self0);
            let ctx = procfs::context_switches(pid).saturating_sub(ctx0);
            let io = procfs::syscalls(pid);
            let io = (io.0.saturating_sub(io0.0), io.1.saturating_sub(io0.1));
            break (window, cpu, own, ctx, io);
        }
        poll.poll(&mut events, Some(Duration::from_millis(5)))
            .map_err(|e| e.to_string())?;
        let t = ms(start);
        for event in &events {
            let i = event.token().0;
            let c = &mut clients[i];
            if c.ended {
                continue;
            }
            match c.ready(event, t, &mut buf, &mut scratch, &mut app) {
                Ok(true) => {}
                Ok(false) | Err(_) => {
                    if !c.open {
                        failed += 1;
                    }
                    c.ended = true;
                }
            }
            for o in app.drain(..) {
                match o {
                    Outbound::Opened(_) => {
                        opened += 1;
                        sent_at[i] = Instant::now();
                        let m = Message::Binary(payload.clone());
                        let _ = c.send(t, m, &mut scratch, &mut Vec::new());
                    }
                    Outbound::Deliver(Message::Binary(_) | Message::Text(_)) => {
                        let now = Instant::now();
                        if measure.is_some() {
                            count += 1;
                            latencies.push((now - sent_at[i]).as_nanos() as u64);
                        }
                        sent_at[i] = now;
                        let m = Message::Binary(payload.clone());
                        let _ = c.send(t, m, &mut scratch, &mut Vec::new());
                    }
                    _ => {}
                }
            }
        }
    };
    let (window, cpu, own, ctx, io) = result;
    latencies.sort_unstable();
    let w = window.as_secs_f64();
    println!(
        "echo conns={opened} failed={failed} len={len} secs={w:.2} round_trips={count} rtps={:.0} \
         cpu_us_per_rt={:.3} user_us_per_rt={:.3} p50_us={:.1} p99_us={:.1} server_cpu_pct={:.0} load_cpu_pct={:.0} \
         ctxsw_per_s={:.0} reads_per_rt={:.3} writes_per_rt={:.3} threads={}",
        count as f64 / w,
        cpu.total.as_secs_f64() * 1e6 / count.max(1) as f64,
        cpu.user.as_secs_f64() * 1e6 / count.max(1) as f64,
        procfs::quantile(&latencies, 0.50) as f64 / 1e3,
        procfs::quantile(&latencies, 0.99) as f64 / 1e3,
        cpu.total.as_secs_f64() * 100.0 / w,
        own.as_secs_f64() * 100.0 / w,
        ctx as f64 / w,
        io.0 as f64 / count.max(1) as f64,
        io.1 as f64 / count.max(1) as f64,
        procfs::threads(pid).unwrap_or(0),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------

const TOPIC: &str = "room:fanout";

/// The `n` and `t` of `[null,null,"room:fanout","shout",{"n":N,"t":T}]`.
fn shout_fields(text: &str) -> Option<(usize, u64)> {
    let at = text.find("\"shout\"")?;
    let rest = &text[at..];
    let number = |key: &str| -> Option<u64> {
        let from = rest.find(key)? + key.len();
        let digits: &str = &rest[from..];
        let end = digits
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(digits.len());
        digits[..end].parse().ok()
    };
    Some((number("\"n\":")? as usize, number("\"t\":")?))
}

/// `fanout --addr A --path /socket/websocket --subs 10000 --broadcasts 100 --rate 0 --pid PID`:
/// SUBS subscribers join `room:fanout`, then one publisher shouts BROADCASTS times, as fast as
/// it can (`--rate 0`) or RATE a second; every subscriber counts what it receives. Ends when
/// all is delivered, after 5 s without a delivery, or 10 s after the last shout.
pub fn fanout(flags: &Flags) -> Result<(), String> {
    let path: String = flag(flags, "path", "/socket/websocket".to_string())?;
    let (addr, url) = addr_url(flags, &path)?;
    let subs: usize = flag(flags, "subs", 10_000)?;
    let broadcasts: usize = flag(flags, "broadcasts", 100)?.max(1);
    let rate: f64 = flag(flags, "rate", 0.0)?;
    let pid: u32 = flag(flags, "pid", 0)?;
    let process: u32 = flag(flags, "process", 0)?;
    let in_flight: usize = flag(flags, "in-flight", 200)?;
    let start = Instant::now();
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let total = subs + 1; // the last one publishes
    let mut clients: Vec<Option<Client>> = (0..total).map(|_| None).collect();
    let mut joined = vec![false; total];
    let (mut scratch, mut app) = (Vec::new(), Vec::new());
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = Events::with_capacity(4096);
    let join = format!(r#"["1","1","{TOPIC}","phx_join",{{}}]"#);
    let (mut next, mut pending, mut n_joined, mut failed) = (0usize, 0usize, 0usize, 0usize);
    let mut got = vec![0u32; broadcasts];
    let mut latencies: Vec<u64> = Vec::with_capacity(subs * broadcasts.min(200));
    let mut delivered = 0usize;
    let join_deadline = start + Duration::from_secs(120);
    // Phases: joining, then publishing (from `began`), then draining.
    let mut began: Option<(Instant, procfs::CpuTime, Duration, (u64, u64))> = None;
    let mut shouted = 0usize;
    let mut last_shout = start;
    let mut last_delivery = start;
    loop {
        let now = Instant::now();
        // Open connections, at most `in_flight` handshakes and joins at a time.
        while began.is_none() && next < total && pending < in_flight {
            let c = Client::connect(
                poll.registry(),
                Token(next),
                source_addr(process, next),
                addr,
                &url,
                next as u64 + 1,
            );
            match c {
                Ok(c) => {
                    clients[next] = Some(c);
                    pending += 1;
                }
                Err(_) => failed += 1,
            }
            next += 1;
        }
        if began.is_none() && next == total && pending == 0
            || began.is_none() && now > join_deadline
        {
            if !joined[subs] {
                return Err(format!(
                    "the publisher did not join ({n_joined} joined, {failed} failed)"
                ));
            }
            std::thread::sleep(Duration::from_millis(300));
            began = Some((
                Instant::now(),
                procfs::cpu_times(pid),
                procfs::cpu(std::process::id()),
                procfs::syscalls(pid),
            ));
        }
        if let Some((t0, _, _, _)) = began {
            // Shout what is due (all at once when the rate is 0).
            let t = ms(start);
            while shouted < broadcasts
                && (rate <= 0.0 || now >= t0 + Duration::from_secs_f64(shouted as f64 / rate))
            {
                let sent = start.elapsed().as_micros();
                let shout =
                    format!(r#"["1","{shouted}","{TOPIC}","shout",{{"n":{shouted},"t":{sent}}}]"#);
                if let Some(p) = clients[subs].as_mut() {
                    let _ = p.send(t, Message::text(shout), &mut scratch, &mut Vec::new());
                }
                shouted += 1;
                last_shout = Instant::now();
            }
            let expected = n_joined.saturating_sub(1) * broadcasts;
            let done = delivered >= expected && shouted == broadcasts;
            let stalled = shouted == broadcasts
                && now.duration_since(last_delivery.max(last_shout)) > Duration::from_secs(5);
            let late = shouted == broadcasts && now > last_shout + Duration::from_secs(10);
            if done || stalled || late {
                break;
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(2)))
            .map_err(|e| e.to_string())?;
        let t = ms(start);
        for event in &events {
            let i = event.token().0;
            let Some(c) = clients[i].as_mut() else {
                continue;
            };
            if c.ended {
                continue;
            }
            let was_open = c.open;
            let alive = c
                .ready(event, t, &mut buf, &mut scratch, &mut app)
                .unwrap_or(false);
            for o in app.drain(..) {
                match o {
                    Outbound::Opened(_) if !was_open => {
                        let m = Message::text(join.as_str());
                        let _ = c.send(t, m, &mut scratch, &mut Vec::new());
                    }
                    Outbound::Deliver(Message::Text(text)) => {
                        if !joined[i] {
                            if text.contains("phx_reply") && text.contains("\"ok\"") {
                                joined[i] = true;
                                n_joined += 1;
                                pending -= 1;
                            }
                        } else if i < subs
                            && let Some((n, sent)) = shout_fields(text.as_str())
                        {
                            let now = start.elapsed().as_micros() as u64;
                            latencies.push(now.saturating_sub(sent));
                            if let Some(g) = got.get_mut(n) {
                                *g += 1;
                            }
                            delivered += 1;
                            last_delivery = Instant::now();
                        }
                    }
                    _ => {}
                }
            }
            if !alive {
                c.ended = true;
                if !joined[i] {
                    failed += 1;
                    pending = pending.saturating_sub(1);
                }
            }
        }
        if let Some(p) = clients[subs].as_mut() {
            let _ = p.flush();
        }
    }
    let (t0, cpu0, own0, io0) = began.expect("published");
    let io = procfs::syscalls(pid);
    let window = last_delivery.max(last_shout).duration_since(t0);
    let cpu = procfs::cpu_times(pid).since(cpu0);
    let own = procfs::cpu(std::process::id()).saturating_sub(own0);
    let subscribers = n_joined.saturating_sub(1);
    let expected = subscribers * broadcasts;
    latencies.sort_unstable();
    let w = window.as_secs_f64().max(1e-6);
    println!(
        "fanout subscribers={subscribers} failed={failed} broadcasts={broadcasts} rate={rate} \
         delivered={delivered} expected={expected} missing={} secs={w:.2} dps={:.0} \
         p50_ms={:.1} p99_ms={:.1} cpu_us_per_delivery={:.3} user_us_per_delivery={:.3} \
         server_cpu_pct={:.0} load_cpu_pct={:.0} writes_per_delivery={:.3}",
        expected.saturating_sub(delivered),
        delivered as f64 / w,
        procfs::quantile(&latencies, 0.50) as f64 / 1e3,
        procfs::quantile(&latencies, 0.99) as f64 / 1e3,
        cpu.total.as_secs_f64() * 1e6 / delivered.max(1) as f64,
        cpu.user.as_secs_f64() * 1e6 / delivered.max(1) as f64,
        cpu.total.as_secs_f64() * 100.0 / w,
        own.as_secs_f64() * 100.0 / w,
        io.1.saturating_sub(io0.1) as f64 / delivered.max(1) as f64,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// `hold --addr A --count N --process P`: opens N connections (128 handshakes at a time),
/// prints `ready CONNECTED FAILED`, answers pings (the core does) until stdin closes, then
/// prints `done pings=N ended=M` and exits. Bounded: 180 s to connect, 600 s in all.
pub fn hold(flags: &Flags) -> Result<(), String> {
    let (addr, url) = addr_url(flags, "/")?;
    let count: usize = flag(flags, "count", 0)?;
    let process: u32 = flag(flags, "process", 0)?;
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while std::io::stdin()
                .lock()
                .read_line(&mut line)
                .is_ok_and(|n| n > 0)
            {}
            stop.store(true, Ordering::Relaxed);
        });
    }
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut clients: Vec<Option<Client>> = (0..count).map(|_| None).collect();
    let (mut scratch, mut app) = (Vec::new(), Vec::new());
    let mut buf = vec![0u8; 4096];
    let mut events = Events::with_capacity(4096);
    let (mut next, mut pending, mut connected, mut failed) = (0usize, 0usize, 0usize, 0usize);
    let (mut pings, mut ended) = (0u64, 0u64);
    let mut reported = false;
    loop {
        if stop.load(Ordering::Relaxed) || start.elapsed() > Duration::from_secs(600) {
            break;
        }
        while next < count && pending < 128 && start.elapsed() < Duration::from_secs(180) {
            match Client::connect(
                poll.registry(),
                Token(next),
                source_addr(process, next),
                addr,
                &url,
                next as u64 + 1,
            ) {
                Ok(c) => {
                    clients[next] = Some(c);
                    pending += 1;
                }
                Err(_) => failed += 1,
            }
            next += 1;
        }
        if !reported && (connected + failed == count || start.elapsed() > Duration::from_secs(180))
        {
            println!("ready {connected} {failed}");
            let _ = std::io::stdout().flush();
            reported = true;
        }
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .map_err(|e| e.to_string())?;
        let t = ms(start);
        for event in &events {
            let i = event.token().0;
            let Some(c) = clients[i].as_mut() else {
                continue;
            };
            let alive = c
                .ready(event, t, &mut buf, &mut scratch, &mut app)
                .unwrap_or(false);
            for o in app.drain(..) {
                match o {
                    Outbound::Opened(_) => {
                        connected += 1;
                        pending -= 1;
                    }
                    Outbound::Deliver(Message::Ping(_)) => pings += 1,
                    _ => {}
                }
            }
            if !alive {
                if !c.open {
                    failed += 1;
                    pending -= 1;
                } else {
                    ended += 1;
                }
                if let Some(mut c) = clients[i].take() {
                    let _ = poll.registry().deregister(&mut c.stream);
                }
            }
        }
    }
    println!("done pings={pings} ended={ended}");
    Ok(())
}
