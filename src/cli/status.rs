//! `prefixd status`: the running agent's pool as a table, read from its introspection endpoint.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use super::{CliError, StatusArgs};

/// GET `path` from `addr` (plain HTTP/1.1 on loopback); returns the status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let status = out
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "not an HTTP answer".to_owned())?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn get_json(addr: SocketAddr, path: &str) -> Result<Value, CliError> {
    let err = |why: String| CliError::Status { addr, why };
    let (status, body) =
        http_get(addr, path).map_err(|e| err(format!("{path}: {e}; is the agent running?")))?;
    if status != 200 {
        return Err(err(format!("{path} answered {status}: {}", body.trim())));
    }
    serde_json::from_str(&body).map_err(|e| err(format!("{path}: {e}")))
}

/// Renders the table from /v1/status, /v1/config and /v1/enis.
pub fn render(status: &Value, config: &Value, enis: &Value, ready: Result<(), String>) -> String {
    let mut out = String::new();
    let node = &config["node"];
    out.push_str(&format!(
        "prefixd on {} ({}), {}\n",
        node["instance"].as_str().unwrap_or("?"),
        node["instance_type"].as_str().unwrap_or("?"),
        match &ready {
            Ok(()) => "ready".to_owned(),
            Err(why) => format!("NOT READY: {why}"),
        }
    ));
    out.push_str(&format!(
        "mode {}{}{}{}\n",
        status["mode"].as_str().unwrap_or("?"),
        if status["fallback_active"].as_bool() == Some(true) {
            ", FALLBACK to /32 secondary addresses"
        } else {
            ""
        },
        if status["prefixes_unsupported"].as_bool() == Some(true) {
            ", endpoint cannot delegate prefixes"
        } else {
            ""
        },
        if status["ipv6_prefixes_unsupported"].as_bool() == Some(true) {
            ", endpoint cannot delegate an IPv6 /80"
        } else {
            ""
        },
    ));
    out.push_str(&format!(
        "{:<23} {:>3}  {:<18} {:>8} {:>7} {:>4}\n",
        "ENI", "DEV", "PREFIX / ADDRESS", "ASSIGNED", "COOLING", "FREE"
    ));
    let (mut t, mut a, mut c) = (0u64, 0u64, 0u64);
    for e in enis.as_array().into_iter().flatten() {
        let id = e["id"].as_str().unwrap_or("?");
        let dev = e["device_index"].as_u64().unwrap_or(0);
        let mut first = true;
        let mut row = |what: String, asg: u64, cool: u64, free: u64, out: &mut String| {
            out.push_str(&format!(
                "{:<23} {:>3}  {:<18} {:>8} {:>7} {:>4}\n",
                if first { id } else { "" },
                if first {
                    dev.to_string()
                } else {
                    String::new()
                },
                what,
                asg,
                cool,
                free
            ));
            first = false;
        };
        for p in e["prefixes"].as_array().into_iter().flatten() {
            let (asg, cool, free) = (
                p["assigned"].as_u64().unwrap_or(0),
                p["cooling"].as_u64().unwrap_or(0),
                p["free"].as_u64().unwrap_or(0),
            );
            t += 16;
            a += asg;
            c += cool;
            row(
                p["cidr"].as_str().unwrap_or("?").to_owned(),
                asg,
                cool,
                free,
                &mut out,
            );
        }
        for ip in e["secondary_ips"].as_array().into_iter().flatten() {
            let st = ip["state"].as_str().unwrap_or("free");
            t += 1;
            let (asg, cool) = ((st == "assigned") as u64, (st == "cooling") as u64);
            a += asg;
            c += cool;
            row(
                format!("{}/32", ip["address"].as_str().unwrap_or("?")),
                asg,
                cool,
                1 - asg - cool,
                &mut out,
            );
        }
        let empty = e["prefixes"].as_array().is_none_or(|a| a.is_empty())
            && e["secondary_ips"].as_array().is_none_or(|a| a.is_empty());
        if empty {
            row("(none)".into(), 0, 0, 0, &mut out);
        }
    }
    out.push_str(&format!(
        "total {t} addresses: {a} assigned, {c} cooling, {} free\n",
        t.saturating_sub(a + c)
    ));
    if let Some(r) = status["last_plan"]["reason"].as_str() {
        out.push_str(&format!("last plan: {r}\n"));
    }
    if let Some(e) = status["last_error"].as_str() {
        out.push_str(&format!("last EC2 error: {e}\n"));
    }
    out
}

/// Runs `prefixd status`.
pub fn run(args: &StatusArgs) -> Result<(), CliError> {
    let addr = args.introspection;
    let status = get_json(addr, "/v1/status")?;
    let config = get_json(addr, "/v1/config")?;
    let enis = get_json(addr, "/v1/enis")?;
    let ready = match http_get(addr, "/readyz") {
        Ok((200, _)) => Ok(()),
        Ok((_, body)) => Err(body.trim().trim_start_matches("not ready: ").to_owned()),
        Err(e) => Err(e),
    };
    print!("{}", render(&status, &config, &enis, ready));
    Ok(())
}
