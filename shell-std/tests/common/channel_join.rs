// Joins `room:slow` as `user` and waits for the join's reply, passing over presence messages:
// a helper of channels_body.rs and slow_subscriber_body.rs, which include it.

fn join(client: &mut Client, user: &str) {
    let join = format!(r#"["1","1","room:slow","phx_join",{{"user":"{user}"}}]"#);
    client.send(Message::text(join)).unwrap();
    // The join reply, then presence_state (and diffs): wait for the reply.
    loop {
        let Message::Text(t) = client.recv().unwrap() else {
            continue;
        };
        if t.contains("phx_reply") {
            assert!(t.contains(r#""status":"ok""#), "{t}");
            return;
        }
    }
}
