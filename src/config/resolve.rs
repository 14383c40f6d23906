//! The typed configurations papo's flags resolve to: a command's values,
//! read through the flag table, checked and turned into the settings each
//! part of papo takes.

use std::path::PathBuf;
use std::time::Duration;

use super::flags::*;
use super::{parse, CliError, Flag, Values};
use crate::auth::{AuthFiles, TokenRequest};
use crate::chat::{ChatConfig, Rate, ENVELOPE};
use crate::client::{ChatClientConfig, ClientTls, GrpcClientConfig, Via, WsClientConfig};
use crate::grpc::GrpcConfig;
use crate::redis::{Durability, RedisConfig};
use crate::tls::TlsFiles;
use crate::ws::WsConfig;

/// `papo serve`, resolved.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub ws_addr: Option<String>,
    pub grpc_addr: Option<String>,
    pub ws: WsConfig,
    pub grpc: GrpcConfig,
    pub chat: ChatConfig,
    /// How long shutdown waits for in-flight gRPC calls and closing peers.
    pub drain_timeout: Duration,
    /// The certificate both ports serve, when they speak TLS.
    pub tls: Option<TlsFiles>,
    /// The Redis that rooms live in, shared with other instances (`None`:
    /// rooms in this process's memory).
    pub redis: Option<RedisConfig>,
    /// The keys chat tokens are checked against (`None`: no tokens, anyone
    /// may join as any name).
    pub auth: Option<AuthFiles>,
}

impl Default for ServeConfig {
    /// `papo serve` with no flags and no environment: the defaults above.
    fn default() -> Self {
        parse(&SERVE, &[], |_| None)
            .and_then(|v| ServeConfig::from_values(&v))
            .unwrap_or_else(|e| unreachable!("papo serve's defaults are valid: {e}"))
    }
}

impl ServeConfig {
    pub fn from_values(v: &Values) -> Result<ServeConfig, CliError> {
        let max_message_size = v.size(&MAX_MESSAGE_SIZE)?;
        let ws = WsConfig {
            max_connections: v.parsed(&MAX_CONNECTIONS)?,
            max_message_size,
            handshake_timeout: v.duration(&HANDSHAKE_TIMEOUT)?,
            ping_interval: v.duration_or_off(&PING_INTERVAL)?,
            pong_timeout: v.duration(&PONG_TIMEOUT)?,
            write_timeout: v.duration_or_off(&WRITE_TIMEOUT)?,
            stack_size: v.size(&STACK_SIZE)?,
            allowed_origins: v.list(&ALLOWED_ORIGIN)?,
            public_hosts: v.list(&PUBLIC_HOST)?,
            listen_backlog: v.parsed(&LISTEN_BACKLOG)?,
            inbound_budget: v.size(&INBOUND_BUDGET)?,
        };
        let grpc = GrpcConfig {
            threads: v.parsed(&GRPC_THREADS)?,
            max_message_size,
            max_streams: v.parsed(&GRPC_MAX_STREAMS)?,
            memory: v.size(&GRPC_MEMORY)?,
            max_connections: v.parsed(&GRPC_MAX_CONNECTIONS)?,
            send_rate: Rate {
                per_second: v.parsed(&SEND_RATE_LIMIT)?,
                burst: v.parsed(&RATE_BURST)?,
            },
            listen_backlog: v.parsed(&LISTEN_BACKLOG)?,
            keepalive_time: v.duration(&GRPC_KEEPALIVE_TIME)?,
            keepalive_timeout: v.duration(&GRPC_KEEPALIVE_TIMEOUT)?,
            write_timeout: v.duration_or_off(&WRITE_TIMEOUT)?,
            handshake_timeout: v.duration(&HANDSHAKE_TIMEOUT)?,
        };
        let chat = ChatConfig {
            send_queue: v.parsed(&SEND_QUEUE)?,
            max_text: max_message_size.saturating_sub(ENVELOPE),
            rate: Rate {
                per_second: v.parsed(&RATE_LIMIT)?,
                burst: v.parsed(&RATE_BURST)?,
            },
            history: v.parsed(&HISTORY)?,
            history_ttl: v.duration(&HISTORY_TTL)?,
            history_budget: v.size(&HISTORY_BUDGET)?,
            max_rooms: v.parsed(&MAX_ROOMS)?,
            join_rate: Rate {
                per_second: v.parsed(&JOIN_RATE_LIMIT)?,
                burst: v.parsed(&JOIN_BURST)?,
            },
            address_join_rate: Rate {
                per_second: v.parsed(&ADDRESS_JOIN_RATE_LIMIT)?,
                burst: v.parsed(&ADDRESS_JOIN_BURST)?,
            },
            one_member_per_name: auth_files(v)?.is_some(),
        };
        let redis = match v.optional(&REDIS)? {
            None => None,
            Some(url) => Some(RedisConfig {
                target: url
                    .parse()
                    .map_err(|e| CliError::Usage(format!("--redis: {e}")).in_command(SERVE.name))?,
                history: chat.history,
                history_ttl: chat.history_ttl,
                presence_ttl: v.duration(&PRESENCE_TTL)?,
                pending: v.size(&REDIS_PENDING)?,
                max_reply: v.size(&REDIS_MAX_REPLY)?,
                durability: durability(v)?,
                one_member_per_name: chat.one_member_per_name,
            }),
        };
        let unless = |off: &Flag, addr: &Flag| -> Result<Option<String>, CliError> {
            Ok(match v.switch(off)? {
                true => None,
                false => Some(v.string(addr)?),
            })
        };
        let config = ServeConfig {
            ws_addr: unless(&NO_WS, &WS_ADDR)?,
            grpc_addr: unless(&NO_GRPC, &GRPC_ADDR)?,
            ws,
            grpc,
            chat,
            drain_timeout: v.duration(&DRAIN_TIMEOUT)?,
            tls: tls_files(v)?,
            redis,
            auth: auth_files(v)?,
        };
        if config.ws_addr.is_none() && config.grpc_addr.is_none() {
            return Err(CliError::Usage(
                "nothing to serve: both --no-ws and --no-grpc given".into(),
            )
            .in_command(SERVE.name));
        }
        Ok(config)
    }
}

/// The token keys, if any is given.
fn auth_files(v: &Values) -> Result<Option<AuthFiles>, CliError> {
    let secret = v.optional(&AUTH_SECRET_FILE)?.map(PathBuf::from);
    let public_key = v.optional(&AUTH_PUBLIC_KEY)?.map(PathBuf::from);
    let leeway = v.duration(&AUTH_LEEWAY)?;
    Ok(
        (secret.is_some() || public_key.is_some()).then_some(AuthFiles {
            secret,
            public_key,
            leeway,
        }),
    )
}

/// When a message sent through Redis is acknowledged.
fn durability(v: &Values) -> Result<Durability, CliError> {
    match v.string(&REDIS_DURABILITY)?.as_str() {
        "memory" => Ok(Durability::Memory),
        "replica" => Ok(Durability::Replica {
            replicas: v.parsed(&REDIS_REPLICAS)?,
            timeout: v.duration(&REDIS_WAIT_TIMEOUT)?,
        }),
        other => Err(CliError::Usage(format!(
            "--redis-durability: {other:?} is not memory or replica"
        ))
        .in_command(SERVE.name)),
    }
}

/// The TLS files, all or none: a certificate needs its key, a client CA
/// needs a certificate.
fn tls_files(v: &Values) -> Result<Option<TlsFiles>, CliError> {
    let usage = |why: &str| Err(CliError::Usage(why.into()).in_command(SERVE.name));
    let ca = v.optional(&GRPC_CLIENT_CA)?.map(PathBuf::from);
    match (v.optional(&TLS_CERT)?, v.optional(&TLS_KEY)?) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert: cert.into(),
            key: key.into(),
            grpc_client_ca: ca,
        })),
        (None, None) if ca.is_none() => Ok(None),
        (None, None) => usage("--grpc-client-ca needs --tls-cert and --tls-key"),
        (Some(_), None) => usage("--tls-cert needs --tls-key"),
        (None, Some(_)) => usage("--tls-key needs --tls-cert"),
    }
}

/// A client's TLS flags; `grpc` says whether the command has `--tls`.
fn client_tls(v: &Values, grpc: bool) -> Result<ClientTls, CliError> {
    if !grpc {
        return Ok(ClientTls {
            ca: v.optional(&CA)?.map(PathBuf::from),
            ..ClientTls::default()
        });
    }
    let cert = v.optional(&CLIENT_CERT)?.map(PathBuf::from);
    let key = v.optional(&CLIENT_KEY)?.map(PathBuf::from);
    if cert.is_some() != key.is_some() {
        return Err(CliError::Usage("--cert and --key go together".into()));
    }
    Ok(ClientTls {
        grpc: v.switch(&TLS)?,
        ca: v.optional(&CA)?.map(PathBuf::from),
        identity: cert.zip(key),
    })
}

impl WsClientConfig {
    pub fn from_values(v: &Values) -> Result<WsClientConfig, CliError> {
        Ok(WsClientConfig {
            url: v.string(&WS_CLIENT_URL)?,
            count: v.parsed(&COUNT)?,
            interval: v.duration(&INTERVAL)?,
            tls: client_tls(v, false)?,
        })
    }
}

impl GrpcClientConfig {
    pub fn from_values(v: &Values) -> Result<GrpcClientConfig, CliError> {
        Ok(GrpcClientConfig {
            addr: v.string(&GRPC_SERVER)?,
            sender: v.string(&SENDER)?,
            text: v.string(&TEXT)?,
            room: v.string(&ROOM_TOO)?,
            timeout: v.duration(&TIMEOUT)?,
            tls: client_tls(v, true)?,
        })
    }
}

impl ChatClientConfig {
    pub fn from_values(v: &Values) -> Result<ChatClientConfig, CliError> {
        Ok(ChatClientConfig {
            room: v.string(&ROOM)?,
            name: v.string(&NAME)?,
            via: v.parsed::<Via>(&VIA)?,
            addr: v.string(&CHAT_GRPC_ADDR)?,
            url: v.string(&CHAT_URL)?,
            tls: client_tls(v, true)?,
        })
    }
}

/// `papo token`, resolved: the secret's file and what to sign.
pub fn token_request(v: &Values) -> Result<(PathBuf, TokenRequest), CliError> {
    let usage = |why: &str| Err(CliError::Usage(why.into()).in_command(TOKEN.name));
    let secret = v.string(&TOKEN_SECRET_FILE)?;
    let sub = v.string(&TOKEN_SUB)?;
    if secret.is_empty() {
        return usage("--secret-file is required");
    }
    if sub.is_empty() {
        return usage("--sub is required");
    }
    let rooms = v.list(&TOKEN_ROOMS)?;
    Ok((
        PathBuf::from(secret),
        TokenRequest {
            sub,
            rooms: (!rooms.is_empty()).then_some(rooms),
            ttl: v.duration(&TOKEN_TTL)?,
            read_only: v.switch(&TOKEN_READ_ONLY)?,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Command;

    #[test]
    fn every_command_resolves_from_its_defaults() {
        let defaults = |cmd: &Command| parse(cmd, &[], |_| None).unwrap();
        let serve = ServeConfig::from_values(&defaults(&SERVE)).unwrap();
        assert_eq!(serve.ws.max_message_size, 4 << 20);
        assert_eq!(serve.grpc.max_message_size, 4 << 20);
        assert_eq!(serve.ws_addr.as_deref(), Some("127.0.0.1:8080"));
        WsClientConfig::from_values(&defaults(&WS_CLIENT)).unwrap();
        GrpcClientConfig::from_values(&defaults(&GRPC_CLIENT)).unwrap();
        let chat = ChatClientConfig::from_values(&defaults(&CHAT)).unwrap();
        assert_eq!(chat.via, Via::Grpc);
    }

    #[test]
    fn via_is_grpc_or_ws_only() {
        let args = |via: &str| vec!["--via".to_owned(), via.to_owned()];
        let v = parse(&CHAT, &args("ws"), |_| None).unwrap();
        assert_eq!(ChatClientConfig::from_values(&v).unwrap().via, Via::Ws);
        let v = parse(&CHAT, &args("smoke"), |_| None).unwrap();
        assert!(matches!(
            ChatClientConfig::from_values(&v),
            Err(CliError::Usage(m)) if m.contains("--via")
        ));
    }
}
