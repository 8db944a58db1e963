//! What listens inside the emulated VPC's namespaces: in every instance, the mock's EC2 API on
//! `127.0.0.1:PORT` and IMDSv2 on `169.254.169.254:80` (for that instance); a TCP echo on the
//! peer and on the internet host. A listener bound from a thread inside a namespace serves that
//! namespace, whichever thread accepts on it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;

use super::fabric::{Fabric, IMDS_ADDR};
use super::{ECHO_PORT, InstanceInfo, VpcError};
use crate::hostnet::netns::NetNs;
use crate::mock::account::Account;
use crate::mock::server::MockServer;

/// A listener in `ns` on `addr`.
fn listen(ns: &NetNs, netns: &str, addr: SocketAddr) -> Result<TcpListener, VpcError> {
    let err = |source| VpcError::Listen {
        netns: netns.to_owned(),
        addr: addr.to_string(),
        source,
    };
    let l = ns.run(|| std::net::TcpListener::bind(addr))?.map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    TcpListener::from_std(l).map_err(err)
}

/// Echoes what each connection sends.
async fn echo(l: TcpListener) {
    while let Ok((mut s, _)) = l.accept().await {
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

/// The listeners of a run.
pub struct Services {
    fabric: Arc<Mutex<Option<Fabric>>>,
    names: BTreeMap<String, String>,
    servers: BTreeMap<String, MockServer>,
    echoes: BTreeMap<String, tokio::task::JoinHandle<()>>,
}

impl Services {
    /// The internet host's echo; instances come with [`Self::start_instance`].
    pub fn start(
        fabric: &Arc<Mutex<Option<Fabric>>>,
        names: BTreeMap<String, String>,
    ) -> Result<Self, VpcError> {
        let mut s = Self {
            fabric: fabric.clone(),
            names,
            servers: BTreeMap::new(),
            echoes: BTreeMap::new(),
        };
        let l = {
            let g = s.fabric.lock().expect("fabric lock");
            let f = g.as_ref().expect("a fabric at start");
            listen(
                &f.inet,
                &f.inet_netns(),
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, ECHO_PORT)),
            )?
        };
        s.echoes.insert("internet".into(), tokio::spawn(echo(l)));
        Ok(s)
    }

    /// The EC2 API and IMDS inside instance `id`'s namespace (and the echo, for the peer).
    pub fn start_instance(
        &mut self,
        account: &Arc<Account>,
        id: &str,
        peer: bool,
    ) -> Result<InstanceInfo, VpcError> {
        let (api, imds, echo_l, netns) = {
            let g = self.fabric.lock().expect("fabric lock");
            let f = g.as_ref().expect("a fabric while running");
            let h = &f.hosts[id];
            let api = listen(&h.ns, &h.netns, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
            let imds = listen(&h.ns, &h.netns, SocketAddr::from((IMDS_ADDR, 80)))?;
            let echo_l = if peer {
                Some(listen(
                    &h.ns,
                    &h.netns,
                    SocketAddr::from((Ipv6Addr::UNSPECIFIED, ECHO_PORT)),
                )?)
            } else {
                None
            };
            (api, imds, echo_l, h.netns.clone())
        };
        let server = MockServer::serve(
            vec![api, imds],
            account.clone(),
            self.names.clone(),
            Some(id.to_owned()),
        )
        .map_err(|source| VpcError::Listen {
            netns: netns.clone(),
            addr: "the mock's API".into(),
            source,
        })?;
        let endpoint = server.endpoint();
        self.servers.insert(id.to_owned(), server);
        if let Some(l) = echo_l {
            self.echoes.insert(id.to_owned(), tokio::spawn(echo(l)));
        }
        Ok(InstanceInfo { netns, endpoint })
    }

    /// Stops what listens in instance `id`.
    pub fn stop(&mut self, id: &str) {
        self.servers.remove(id);
        if let Some(t) = self.echoes.remove(id) {
            t.abort();
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        for t in self.echoes.values() {
            t.abort();
        }
    }
}
