//! The handshake with the node's agent: after ADD wired a pod, the agent attaches the pod's endpoint
//! programs before the plugin returns, so no packet of the pod runs ahead of its datapath (as
//! Cilium's CNI waits for endpoint creation). One JSON request line, one JSON response line over
//! `<agent-state-dir>/agent.sock`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// File name of the agent's socket inside its state directory.
pub const AGENT_SOCKET: &str = "agent.sock";
/// How long the agent may take to put an endpoint's datapath in place.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent socket {path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("agent refused endpoint {interface}: {message}")]
    Refused { interface: String, message: String },
    #[error("agent answered {answer:?}, expected endpointReady")]
    Unexpected { answer: String },
}

/// Whether an agent socket exists in `state_dir`. Without one, the agent is down: the pod is wired
/// anyway (fail static) and the agent attaches its programs when it returns.
pub fn socket_present(state_dir: &Path) -> bool {
    state_dir.join(AGENT_SOCKET).exists()
}

/// Asks the agent to put the endpoint behind `interface` in place and waits for its answer.
pub fn sync_endpoint(state_dir: &Path, interface: &str) -> Result<u32, AgentError> {
    let path = state_dir.join(AGENT_SOCKET);
    let io = |source| AgentError::Io {
        path: path.clone(),
        source,
    };
    let mut s = UnixStream::connect(&path).map_err(io)?;
    s.set_read_timeout(Some(SYNC_TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(SYNC_TIMEOUT)).map_err(io)?;
    let mut req =
        serde_json::to_vec(&serde_json::json!({"op": "sync-endpoint", "interface": interface}))
            .expect("request serializes");
    req.push(b'\n');
    s.write_all(&req).map_err(io)?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).map_err(io)?;
    parse_answer(&line, interface)
}

fn parse_answer(line: &str, interface: &str) -> Result<u32, AgentError> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|_| AgentError::Unexpected {
        answer: line.trim().to_string(),
    })?;
    if let Some(ifindex) = v["endpointReady"]["ifindex"].as_u64() {
        return Ok(ifindex as u32);
    }
    if let Some(msg) = v["error"].as_str() {
        return Err(AgentError::Refused {
            interface: interface.to_string(),
            message: msg.to_string(),
        });
    }
    Err(AgentError::Unexpected {
        answer: line.trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_answer_gives_the_ifindex() {
        assert_eq!(
            parse_answer(
                r#"{"endpointReady":{"interface":"lxc1","ifindex":7}}"#,
                "lxc1"
            )
            .unwrap(),
            7
        );
    }

    #[test]
    fn refusal_names_interface_and_reason() {
        let e = parse_answer(r#"{"error":"not a pod device"}"#, "lxc1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lxc1") && e.contains("not a pod device"), "{e}");
        let e = parse_answer("garbage", "lxc1").unwrap_err().to_string();
        assert!(e.contains("garbage"), "{e}");
    }

    // A real socket: the request is one JSON line with op and interface.
    #[test]
    fn speaks_json_lines_over_the_socket() {
        let dir = std::env::temp_dir().join(format!("cilia-cni-agent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let l = std::os::unix::net::UnixListener::bind(dir.join(AGENT_SOCKET)).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(
                v,
                serde_json::json!({"op":"sync-endpoint","interface":"lxcab"})
            );
            (&s).write_all(b"{\"endpointReady\":{\"interface\":\"lxcab\",\"ifindex\":3}}\n")
                .unwrap();
        });
        assert!(socket_present(&dir));
        assert_eq!(sync_endpoint(&dir, "lxcab").unwrap(), 3);
        t.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
