//! The one thing read from a binary's ELF headers: its program interpreter
//! (`PT_INTERP`), the dynamic loader the kernel starts it with. The image must
//! hold the loader at exactly that path, so it is read from the binary rather
//! than guessed from `ldd`'s output format. 64-bit ELF only: every platform
//! [`crate::oci::host_platform`] names is 64-bit.

const PT_INTERP: u32 = 3;
const ELFCLASS64: u8 = 2;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("not a 64-bit ELF file")]
    Not64Bit,
    #[error("truncated ELF headers")]
    Truncated,
    #[error("its PT_INTERP is not a NUL-terminated UTF-8 absolute path")]
    BadInterpreter,
}

/// The `PT_INTERP` path of the ELF image `bytes`; `None` for a static binary.
pub fn interpreter(bytes: &[u8]) -> Result<Option<String>, ElfError> {
    if bytes.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(ElfError::NotElf);
    }
    if bytes.get(4) != Some(&ELFCLASS64) {
        return Err(ElfError::Not64Bit);
    }
    let big_endian = bytes.get(5) == Some(&2);
    let read = Reader { bytes, big_endian };
    let table = read.u64(0x20)?;
    let entry_size = u64::from(read.u16(0x36)?);
    let entries = u64::from(read.u16(0x38)?);
    for n in 0..entries {
        let header = table + n * entry_size;
        if read.u32(header)? == PT_INTERP {
            let offset = read.u64(header + 8)?;
            let size = read.u64(header + 32)?;
            let raw = read.slice(offset, size)?;
            return match raw.split_last() {
                Some((0, path)) => match std::str::from_utf8(path) {
                    Ok(path) if path.starts_with('/') => Ok(Some(path.to_string())),
                    _ => Err(ElfError::BadInterpreter),
                },
                _ => Err(ElfError::BadInterpreter),
            };
        }
    }
    Ok(None)
}

struct Reader<'a> {
    bytes: &'a [u8],
    big_endian: bool,
}

impl Reader<'_> {
    fn slice(&self, offset: u64, len: u64) -> Result<&[u8], ElfError> {
        let start = usize::try_from(offset).map_err(|_| ElfError::Truncated)?;
        let len = usize::try_from(len).map_err(|_| ElfError::Truncated)?;
        let end = start.checked_add(len).ok_or(ElfError::Truncated)?;
        self.bytes.get(start..end).ok_or(ElfError::Truncated)
    }

    fn array<const N: usize>(&self, offset: u64) -> Result<[u8; N], ElfError> {
        let mut array: [u8; N] = self
            .slice(offset, N as u64)?
            .try_into()
            .map_err(|_| ElfError::Truncated)?;
        if self.big_endian {
            array.reverse();
        }
        Ok(array)
    }

    fn u16(&self, offset: u64) -> Result<u16, ElfError> {
        self.array(offset).map(u16::from_le_bytes)
    }

    fn u32(&self, offset: u64) -> Result<u32, ElfError> {
        self.array(offset).map(u32::from_le_bytes)
    }

    fn u64(&self, offset: u64) -> Result<u64, ElfError> {
        self.array(offset).map(u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal little-endian ELF64 header with the given program headers
    /// (type, contents) and their contents appended after the table.
    fn elf(programs: &[(u32, &[u8])]) -> Vec<u8> {
        let mut bytes = vec![0u8; 64];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = ELFCLASS64;
        bytes[5] = 1;
        bytes[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        bytes[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        bytes[0x38..0x3a].copy_from_slice(&(programs.len() as u16).to_le_bytes());
        let mut data_at = 64 + 56 * programs.len() as u64;
        for (kind, data) in programs {
            let mut header = vec![0u8; 56];
            header[..4].copy_from_slice(&kind.to_le_bytes());
            header[8..16].copy_from_slice(&data_at.to_le_bytes());
            header[32..40].copy_from_slice(&(data.len() as u64).to_le_bytes());
            bytes.extend(header);
            data_at += data.len() as u64;
        }
        for (_, data) in programs {
            bytes.extend_from_slice(data);
        }
        bytes
    }

    #[test]
    fn reads_the_interpreter_path() {
        let bytes = elf(&[(1, b"code"), (PT_INTERP, b"/lib64/ld-linux-x86-64.so.2\0")]);
        assert_eq!(
            interpreter(&bytes),
            Ok(Some("/lib64/ld-linux-x86-64.so.2".into()))
        );
    }

    #[test]
    fn a_static_binary_has_none() {
        assert_eq!(interpreter(&elf(&[(1, b"code")])), Ok(None));
    }

    #[test]
    fn malformed_files_are_errors_not_panics() {
        let mut truncated = elf(&[(PT_INTERP, b"/lib/ld.so\0")]);
        truncated.truncate(100);
        for (bytes, error) in [
            (b"#!/bin/sh\n".to_vec(), ElfError::NotElf),
            (b"\x7fELF\x01\x01".to_vec(), ElfError::Not64Bit),
            (b"\x7fELF\x02\x01".to_vec(), ElfError::Truncated),
            (truncated, ElfError::Truncated),
            (elf(&[(PT_INTERP, b"/lib/ld.so")]), ElfError::BadInterpreter),
            (elf(&[(PT_INTERP, b"ld.so\0")]), ElfError::BadInterpreter),
        ] {
            assert_eq!(interpreter(&bytes), Err(error));
        }
    }

    /// Test binaries on glibc targets are dynamically linked.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn this_test_binary_names_an_existing_loader() {
        let bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let loader = interpreter(&bytes).unwrap().unwrap();
        assert!(std::path::Path::new(&loader).is_file(), "{loader}");
    }
}
