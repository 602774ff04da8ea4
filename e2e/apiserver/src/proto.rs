//! Decoding of Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) into
//! JSON, for the few kinds typed Go clients send that way: Helm's release storage writes
//! Secrets (and may create Namespaces, ConfigMaps, DeleteOptions) with protobuf bodies.
//! Responses are always JSON, which those clients accept too.
//!
//! Only the fields of the kinds listed in [`descriptor`] are known; unknown fields are skipped.

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::error::ApiError;

/// Magic prefix of the Kubernetes protobuf envelope.
const MAGIC: &[u8] = b"k8s\x00";

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    /// `metav1.Time` (`seconds`, `nanos`) as RFC 3339.
    Time,
    Msg(&'static [Field]),
    MapStr,
    MapBytes,
    RepStr,
    RepMsg(&'static [Field]),
    /// `FieldsV1{Raw}`: JSON bytes.
    RawJson,
}

type Field = (u64, &'static str, Kind);

const OWNER_REF: &[Field] = &[
    (1, "kind", Kind::Str),
    (3, "name", Kind::Str),
    (4, "uid", Kind::Str),
    (5, "apiVersion", Kind::Str),
    (6, "controller", Kind::Bool),
    (7, "blockOwnerDeletion", Kind::Bool),
];
const MANAGED_FIELDS: &[Field] = &[
    (1, "manager", Kind::Str),
    (2, "operation", Kind::Str),
    (3, "apiVersion", Kind::Str),
    (4, "time", Kind::Time),
    (6, "fieldsType", Kind::Str),
    (7, "fieldsV1", Kind::RawJson),
    (8, "subresource", Kind::Str),
];
const OBJECT_META: &[Field] = &[
    (1, "name", Kind::Str),
    (2, "generateName", Kind::Str),
    (3, "namespace", Kind::Str),
    (4, "selfLink", Kind::Str),
    (5, "uid", Kind::Str),
    (6, "resourceVersion", Kind::Str),
    (7, "generation", Kind::Int),
    (8, "creationTimestamp", Kind::Time),
    (9, "deletionTimestamp", Kind::Time),
    (10, "deletionGracePeriodSeconds", Kind::Int),
    (11, "labels", Kind::MapStr),
    (12, "annotations", Kind::MapStr),
    (13, "ownerReferences", Kind::RepMsg(OWNER_REF)),
    (14, "finalizers", Kind::RepStr),
    (17, "managedFields", Kind::RepMsg(MANAGED_FIELDS)),
];
const SECRET: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (2, "data", Kind::MapBytes),
    (3, "type", Kind::Str),
    (4, "stringData", Kind::MapStr),
    (5, "immutable", Kind::Bool),
];
const CONFIG_MAP: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (2, "data", Kind::MapStr),
    (3, "binaryData", Kind::MapBytes),
    (4, "immutable", Kind::Bool),
];
const NAMESPACE_SPEC: &[Field] = &[(1, "finalizers", Kind::RepStr)];
const NAMESPACE: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (2, "spec", Kind::Msg(NAMESPACE_SPEC)),
];
const PRECONDITIONS: &[Field] = &[(1, "uid", Kind::Str), (2, "resourceVersion", Kind::Str)];
const DELETE_OPTIONS: &[Field] = &[
    (1, "gracePeriodSeconds", Kind::Int),
    (2, "preconditions", Kind::Msg(PRECONDITIONS)),
    (3, "orphanDependents", Kind::Bool),
    (4, "propagationPolicy", Kind::Str),
    (5, "dryRun", Kind::RepStr),
];
const SERVICE_ACCOUNT: &[Field] = &[(1, "metadata", Kind::Msg(OBJECT_META))];

fn descriptor(kind: &str) -> Option<&'static [Field]> {
    Some(match kind {
        "Secret" => SECRET,
        "ConfigMap" => CONFIG_MAP,
        "Namespace" => NAMESPACE,
        "DeleteOptions" => DELETE_OPTIONS,
        "ServiceAccount" => SERVICE_ACCOUNT,
        _ => return None,
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    fn skip(&mut self, wire: u64) -> Option<()> {
        match wire {
            0 => {
                self.varint()?;
            }
            1 => self.pos = self.pos.checked_add(8).filter(|p| *p <= self.buf.len())?,
            2 => {
                self.bytes()?;
            }
            5 => self.pos = self.pos.checked_add(4).filter(|p| *p <= self.buf.len())?,
            _ => return None,
        }
        Some(())
    }

    /// Iterates `(field number, wire type)`.
    fn tag(&mut self) -> Option<Option<(u64, u64)>> {
        if self.pos >= self.buf.len() {
            return Some(None);
        }
        let t = self.varint()?;
        Some(Some((t >> 3, t & 7)))
    }
}

fn utf8(b: &[u8]) -> Option<String> {
    String::from_utf8(b.to_vec()).ok()
}

fn decode_time(b: &[u8]) -> Option<Value> {
    let mut r = Reader { buf: b, pos: 0 };
    let mut secs = 0i64;
    while let Some((num, wire)) = r.tag()? {
        match (num, wire) {
            (1, 0) => secs = r.varint()? as i64,
            _ => r.skip(wire)?,
        }
    }
    Some(Value::String(crate::meta::format_rfc3339(secs)))
}

fn decode_map_entry(b: &[u8], bytes_values: bool) -> Option<(String, Value)> {
    let mut r = Reader { buf: b, pos: 0 };
    let (mut k, mut v) = (String::new(), Value::String(String::new()));
    while let Some((num, wire)) = r.tag()? {
        match (num, wire) {
            (1, 2) => k = utf8(r.bytes()?)?,
            (2, 2) => {
                let raw = r.bytes()?;
                v = if bytes_values {
                    Value::String(base64::engine::general_purpose::STANDARD.encode(raw))
                } else {
                    Value::String(utf8(raw)?)
                };
            }
            _ => r.skip(wire)?,
        }
    }
    Some((k, v))
}

fn decode_message(b: &[u8], fields: &[Field]) -> Option<Value> {
    let mut r = Reader { buf: b, pos: 0 };
    let mut out = Map::new();
    while let Some((num, wire)) = r.tag()? {
        let Some(&(_, name, kind)) = fields.iter().find(|f| f.0 == num) else {
            r.skip(wire)?;
            continue;
        };
        match (kind, wire) {
            (Kind::Str, 2) => {
                out.insert(name.into(), Value::String(utf8(r.bytes()?)?));
            }
            (Kind::Int, 0) => {
                out.insert(name.into(), json!(r.varint()? as i64));
            }
            (Kind::Bool, 0) => {
                out.insert(name.into(), Value::Bool(r.varint()? != 0));
            }
            (Kind::Time, 2) => {
                out.insert(name.into(), decode_time(r.bytes()?)?);
            }
            (Kind::Msg(sub), 2) => {
                out.insert(name.into(), decode_message(r.bytes()?, sub)?);
            }
            (Kind::MapStr | Kind::MapBytes, 2) => {
                let (k, v) = decode_map_entry(r.bytes()?, matches!(kind, Kind::MapBytes))?;
                out.entry(name).or_insert_with(|| json!({}))[k] = v;
            }
            (Kind::RepStr, 2) => {
                let s = Value::String(utf8(r.bytes()?)?);
                if let Some(a) = out.entry(name).or_insert_with(|| json!([])).as_array_mut() {
                    a.push(s);
                }
            }
            (Kind::RepMsg(sub), 2) => {
                let m = decode_message(r.bytes()?, sub)?;
                if let Some(a) = out.entry(name).or_insert_with(|| json!([])).as_array_mut() {
                    a.push(m);
                }
            }
            (Kind::RawJson, 2) => {
                // FieldsV1 { bytes Raw = 1 }
                let mut inner = Reader {
                    buf: r.bytes()?,
                    pos: 0,
                };
                let mut v = json!({});
                while let Some((n, w)) = inner.tag()? {
                    if (n, w) == (1, 2) {
                        v = serde_json::from_slice(inner.bytes()?).ok()?;
                    } else {
                        inner.skip(w)?;
                    }
                }
                out.insert(name.into(), v);
            }
            _ => r.skip(wire)?,
        }
    }
    Some(Value::Object(out))
}

/// Decodes an enveloped protobuf body into its JSON form.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let bad = |what: &str| ApiError::bad_request(format!("unable to decode protobuf body: {what}"));
    let payload = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("missing the k8s envelope"))?;
    // runtime.Unknown { TypeMeta typeMeta = 1; bytes raw = 2; string contentEncoding = 3; string contentType = 4; }
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while let Some((num, wire)) = r.tag().ok_or_else(|| bad("truncated envelope"))? {
        match (num, wire) {
            (1, 2) => {
                let mut tm = Reader {
                    buf: r.bytes().ok_or_else(|| bad("truncated type meta"))?,
                    pos: 0,
                };
                while let Some((n, w)) = tm.tag().ok_or_else(|| bad("truncated type meta"))? {
                    match (n, w) {
                        (1, 2) => {
                            api_version =
                                tm.bytes().and_then(utf8).ok_or_else(|| bad("apiVersion"))?
                        }
                        (2, 2) => kind = tm.bytes().and_then(utf8).ok_or_else(|| bad("kind"))?,
                        _ => tm.skip(w).ok_or_else(|| bad("type meta"))?,
                    }
                }
            }
            (2, 2) => raw = r.bytes().ok_or_else(|| bad("truncated raw object"))?,
            _ => r.skip(wire).ok_or_else(|| bad("envelope"))?,
        }
    }
    let fields = descriptor(&kind).ok_or_else(|| {
        ApiError::unsupported_media_type(&format!(
            "application/vnd.kubernetes.protobuf (kind {kind:?} is only served as JSON)"
        ))
    })?;
    let mut v = decode_message(raw, fields).ok_or_else(|| bad("malformed object"))?;
    v["apiVersion"] = Value::String(api_version);
    v["kind"] = Value::String(kind);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn field(num: u64, payload: &[u8], out: &mut Vec<u8>) {
        varint(num << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    fn entry(k: &str, v: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        field(1, k.as_bytes(), &mut e);
        field(2, v, &mut e);
        e
    }

    // A Secret as Helm's storage driver sends it decodes to the same JSON a JSON client sends.
    #[test]
    fn decodes_a_helm_release_secret() {
        let mut meta = Vec::new();
        field(1, b"sh.helm.release.v1.cilia.v1", &mut meta);
        field(3, b"kube-system", &mut meta);
        field(11, &entry("owner", b"helm"), &mut meta);
        field(11, &entry("name", b"cilia"), &mut meta);
        let mut secret = Vec::new();
        field(1, &meta, &mut secret);
        field(2, &entry("release", b"H4sI"), &mut secret);
        field(3, b"helm.sh/release.v1", &mut secret);
        let mut tm = Vec::new();
        field(1, b"v1", &mut tm);
        field(2, b"Secret", &mut tm);
        let mut body = MAGIC.to_vec();
        field(1, &tm, &mut body);
        field(2, &secret, &mut body);
        let v = decode(&body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1",
                   "metadata": {"name": "sh.helm.release.v1.cilia.v1", "namespace": "kube-system", "labels": {"owner": "helm", "name": "cilia"}},
                   "data": {"release": "SDRzSQ=="}})
        );
    }

    #[test]
    fn rejects_garbage_and_unknown_kinds() {
        assert_eq!(decode(b"nope").unwrap_err().code, 400);
        let mut tm = Vec::new();
        field(2, b"Deployment", &mut tm);
        let mut body = MAGIC.to_vec();
        field(1, &tm, &mut body);
        assert_eq!(decode(&body).unwrap_err().code, 415);
        let mut truncated = MAGIC.to_vec();
        truncated.extend_from_slice(&[0x0a, 0x50, 0x01]);
        assert_eq!(decode(&truncated).unwrap_err().code, 400);
    }
}
