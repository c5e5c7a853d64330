//! A plugin file's ELF header, checked before the dynamic loader sees it: a shared object for
//! this machine's architecture, and complete. A file still being written (truncated) would map
//! pages past its end and crash the process with SIGBUS on first touch, so every loadable segment
//! and the section header table (which linkers write last) must lie inside the file.

/// Why bytes are not a loadable shared object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    #[error("not a shared library (no ELF shared-object header): build the plugin as a cdylib")]
    NotSharedObject,
    #[error("built for another machine ({0}); this host is {host}", host = std::env::consts::ARCH)]
    WrongMachine(String),
    #[error("the file is incomplete ({0}): it is probably still being written")]
    Truncated(&'static str),
}

const ET_DYN: u16 = 3;
const PT_LOAD: u32 = 1;

/// The ELF machine number of the architecture this host was built for.
fn host_machine() -> Option<u16> {
    match std::env::consts::ARCH {
        "x86_64" => Some(0x3E),
        "aarch64" => Some(0xB7),
        "riscv64" => Some(0xF3),
        _ => None,
    }
}

/// Checks a 64-bit little-endian shared object (what every platform plughost runs on produces).
pub fn check(bytes: &[u8]) -> Result<(), ElfError> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err(ElfError::NotSharedObject);
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err(ElfError::WrongMachine("not a 64-bit little-endian ELF".to_owned()));
    }
    if u16_at(bytes, 16) != Some(ET_DYN) {
        return Err(ElfError::NotSharedObject);
    }
    let machine = u16_at(bytes, 18).unwrap_or(0);
    if host_machine().is_some_and(|host| host != machine) {
        return Err(ElfError::WrongMachine(format!("ELF machine {machine:#x}")));
    }
    let len = bytes.len() as u64;
    let ph_off = u64_at(bytes, 0x20).ok_or(ElfError::Truncated("header"))?;
    let sh_off = u64_at(bytes, 0x28).ok_or(ElfError::Truncated("header"))?;
    let ph_size = u64::from(u16_at(bytes, 0x36).unwrap_or(0));
    let ph_count = u64::from(u16_at(bytes, 0x38).unwrap_or(0));
    let sh_size = u64::from(u16_at(bytes, 0x3A).unwrap_or(0));
    let sh_count = u64::from(u16_at(bytes, 0x3C).unwrap_or(0));
    if ph_count == 0 || ph_size < 56 || ph_off.saturating_add(ph_size * ph_count) > len {
        return Err(ElfError::Truncated("program headers"));
    }
    if sh_off.saturating_add(sh_size * sh_count) > len {
        return Err(ElfError::Truncated("section headers"));
    }
    for i in 0..ph_count {
        let at = usize::try_from(ph_off + i * ph_size).map_err(|_| ElfError::Truncated("program headers"))?;
        let kind = u32_at(bytes, at).ok_or(ElfError::Truncated("program headers"))?;
        let offset = u64_at(bytes, at + 8).ok_or(ElfError::Truncated("program headers"))?;
        let file_size = u64_at(bytes, at + 0x20).ok_or(ElfError::Truncated("program headers"))?;
        if kind == PT_LOAD && offset.saturating_add(file_size) > len {
            return Err(ElfError::Truncated("a loadable segment runs past the end"));
        }
    }
    Ok(())
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test binary's own dependencies include real shared objects: libc's is everywhere.
    fn real_shared_object() -> Vec<u8> {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let path = maps
            .split_whitespace()
            .find(|w| w.contains("libc.so") || w.contains("libc-"))
            .unwrap()
            .to_owned();
        std::fs::read(path).unwrap()
    }

    #[test]
    fn a_real_library_passes_and_every_truncation_fails() {
        let bytes = real_shared_object();
        assert_eq!(check(&bytes), Ok(()));
        for cut in [10, 64, 200, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
            assert!(check(&bytes[..cut]).is_err(), "a file cut at {cut} of {} bytes passed", bytes.len());
        }
    }

    #[test]
    fn other_files_are_refused() {
        assert_eq!(check(b"#!/bin/sh\necho hi\n"), Err(ElfError::NotSharedObject));
        assert_eq!(check(b""), Err(ElfError::NotSharedObject));
        let mut executable = real_shared_object();
        executable[16] = 2;
        assert_eq!(check(&executable), Err(ElfError::NotSharedObject));
        let mut foreign = real_shared_object();
        foreign[18] = 0x28; // ARM
        assert!(matches!(check(&foreign), Err(ElfError::WrongMachine(_))));
    }
}
