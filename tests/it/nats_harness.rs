//! The `NatsServer` harness itself: dynamic port, kill, restart on the same port and store.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::nats::NatsServer;

/// Connects with a plain socket and returns the server's greeting line (`INFO {...}`).
fn read_info(server: &NatsServer) -> String {
    let stream = TcpStream::connect(("127.0.0.1", server.port())).expect("connect to nats-server");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).expect("read INFO");
    line
}

/// One JetStream API request over the raw NATS protocol; returns the JSON reply.
fn js_api(server: &NatsServer, subject: &str, payload: &str) -> serde_json::Value {
    let mut stream = TcpStream::connect(("127.0.0.1", server.port())).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        stream,
        "CONNECT {{\"verbose\":false,\"headers\":true,\"no_responders\":true}}\r\n\
         SUB _INBOX.harness 1\r\n\
         PUB {subject} _INBOX.harness {}\r\n{payload}\r\n",
        payload.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read from nats-server");
        let line = line.trim_end();
        if line.starts_with("MSG ") || line.starts_with("HMSG ") {
            // The last field is the total size (headers + payload); headers are not expected.
            let len: usize = line.rsplit(' ').next().unwrap().parse().unwrap();
            let mut body = vec![0; len + 2];
            reader.read_exact(&mut body).unwrap();
            return serde_json::from_slice(&body[..len]).expect("JSON reply");
        }
        assert!(!line.starts_with("-ERR"), "nats-server said {line}");
        assert!(!line.is_empty(), "connection closed before a reply");
    }
}

#[test]
fn starts_kills_and_restarts_on_the_same_port_and_store() {
    let mut server = NatsServer::start();
    let port = server.port();
    assert_ne!(port, 0);
    assert_eq!(server.url(), format!("nats://127.0.0.1:{port}"));

    let info = read_info(&server);
    assert!(info.starts_with("INFO {"), "unexpected greeting: {info}");
    assert!(info.contains("\"jetstream\":true"), "JetStream not enabled: {info}");

    let created = js_api(
        &server,
        "$JS.API.STREAM.CREATE.HARNESS",
        r#"{"name":"HARNESS","subjects":["harness.>"],"storage":"file"}"#,
    );
    assert!(created.get("error").is_none(), "stream create failed: {created}");
    assert!(server.store_dir().join("jetstream").is_dir());

    server.kill();
    assert!(!server.is_running());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "port still open after kill");

    server.restart();
    assert_eq!(server.port(), port);
    assert!(server.is_running());
    let info = read_info(&server);
    assert!(info.starts_with("INFO {"), "unexpected greeting after restart: {info}");

    // The same store dir: the stream created before the kill is still there.
    let stream = js_api(&server, "$JS.API.STREAM.INFO.HARNESS", "");
    assert_eq!(stream["config"]["name"], "HARNESS", "stream lost across restart: {stream}");
}

#[test]
fn servers_are_isolated() {
    let a = NatsServer::start();
    let b = NatsServer::start();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.store_dir(), b.store_dir());
}
