//! The filter module as the Wasm image spec describes it (solo-io/wasm
//! `spec/spec.md`, the *oci* variant Istio pulls): checked to be a proxy-wasm
//! module before it ships, and described by a runtime configuration naming
//! the ABI versions it exports.

use serde::Serialize;

const MAGIC: &[u8] = b"\0asm";
const VERSION_1: &[u8] = &[1, 0, 0, 0];
const EXPORT_SECTION: u8 = 7;
/// proxy-wasm modules export one function per ABI version they speak,
/// named `proxy_abi_version_X_Y_Z`; Envoy picks the ABI from it.
const ABI_EXPORT_PREFIX: &str = "proxy_abi_version_";

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WasmError {
    #[error("no Wasm magic number and version 1 header")]
    NotWasm,
    #[error("truncated or malformed section table")]
    Malformed,
    #[error("it exports no proxy_abi_version_* function")]
    NoProxyAbi,
}

/// `application/vnd.module.wasm.config.v1+json` for an Envoy filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub abi_versions: Vec<String>,
    /// Runtime-specific settings; the filter needs none from the image.
    pub config: serde_json::Map<String, serde_json::Value>,
}

/// The runtime configuration of proxy-wasm module `module`, or why it is not one.
pub fn runtime_config(module: &[u8]) -> Result<RuntimeConfig, WasmError> {
    let abi_versions: Vec<String> = exports(module)?
        .into_iter()
        .filter(|name| name.starts_with(ABI_EXPORT_PREFIX))
        .collect();
    if abi_versions.is_empty() {
        return Err(WasmError::NoProxyAbi);
    }
    Ok(RuntimeConfig {
        kind: "envoy_proxy",
        abi_versions,
        config: serde_json::Map::new(),
    })
}

/// The names in the module's export section, in order.
fn exports(module: &[u8]) -> Result<Vec<String>, WasmError> {
    if module.get(..4) != Some(MAGIC) || module.get(4..8) != Some(VERSION_1) {
        return Err(WasmError::NotWasm);
    }
    let mut cursor = Cursor {
        bytes: module,
        at: 8,
    };
    let mut names = Vec::new();
    while !cursor.done() {
        let id = cursor.byte()?;
        let size = cursor.leb()?;
        let mut section = Cursor {
            bytes: cursor.take(size)?,
            at: 0,
        };
        if id != EXPORT_SECTION {
            continue;
        }
        for _ in 0..section.leb()? {
            let len = section.leb()?;
            let name = std::str::from_utf8(section.take(len)?).map_err(|_| WasmError::Malformed)?;
            names.push(name.to_string());
            section.byte()?; // the kind: function, table, memory, global
            section.leb()?; // its index
        }
    }
    Ok(names)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn byte(&mut self) -> Result<u8, WasmError> {
        let byte = *self.bytes.get(self.at).ok_or(WasmError::Malformed)?;
        self.at += 1;
        Ok(byte)
    }

    fn take(&mut self, len: u32) -> Result<&'a [u8], WasmError> {
        let end = self
            .at
            .checked_add(len as usize)
            .ok_or(WasmError::Malformed)?;
        let slice = self.bytes.get(self.at..end).ok_or(WasmError::Malformed)?;
        self.at = end;
        Ok(slice)
    }

    /// An unsigned LEB128 `u32`, as Wasm encodes sizes, counts and indices.
    fn leb(&mut self) -> Result<u32, WasmError> {
        let mut value: u32 = 0;
        for shift in (0..35).step_by(7) {
            let byte = self.byte()?;
            value |= u32::from(byte & 0x7f)
                .checked_shl(shift)
                .ok_or(WasmError::Malformed)?;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WasmError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module with one custom section and an export section naming `names`.
    fn module(names: &[&str]) -> Vec<u8> {
        let mut exports = vec![names.len() as u8];
        for (index, name) in names.iter().enumerate() {
            exports.push(name.len() as u8);
            exports.extend_from_slice(name.as_bytes());
            exports.extend([0, index as u8]);
        }
        let mut bytes = [MAGIC, VERSION_1].concat();
        bytes.extend([0, 3, 1, b'x', 0]); // custom section "x", one byte
        bytes.push(EXPORT_SECTION);
        bytes.push(exports.len() as u8);
        bytes.extend(exports);
        bytes
    }

    #[test]
    fn names_the_abi_versions_a_module_exports() {
        let config = runtime_config(&module(&[
            "memory",
            "proxy_abi_version_0_2_1",
            "proxy_on_vm_start",
        ]))
        .unwrap();
        assert_eq!(config.abi_versions, ["proxy_abi_version_0_2_1"]);
        assert_eq!(
            serde_json::to_string(&config).unwrap(),
            r#"{"type":"envoy_proxy","abiVersions":["proxy_abi_version_0_2_1"],"config":{}}"#
        );
    }

    #[test]
    fn refuses_what_is_not_a_proxy_wasm_module() {
        let mut truncated = module(&["proxy_abi_version_0_2_1"]);
        truncated.truncate(truncated.len() - 3);
        for (bytes, error) in [
            (b"\x7fELF\x02\x01\x01\x00".to_vec(), WasmError::NotWasm),
            (module(&["memory", "_start"]), WasmError::NoProxyAbi),
            (truncated, WasmError::Malformed),
            (
                [MAGIC, VERSION_1, &[7, 0xff, 0xff, 0xff, 0xff, 0xff]].concat(),
                WasmError::Malformed,
            ),
        ] {
            assert_eq!(runtime_config(&bytes), Err(error));
        }
    }

    #[test]
    fn leb128_reads_multi_byte_values() {
        let mut cursor = Cursor {
            bytes: &[0xe5, 0x8e, 0x26, 0x7f],
            at: 0,
        };
        assert_eq!(cursor.leb(), Ok(624_485));
        assert_eq!(cursor.leb(), Ok(127));
        assert_eq!(cursor.leb(), Err(WasmError::Malformed));
    }
}
