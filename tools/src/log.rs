//! `sluice log dump` and `sluice log verify`: offline inspection of partition logs, with the
//! broker's own scanner and index decoder, so they check exactly what recovery checks.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sluice_broker::storage::compaction::records_section;
use sluice_broker::storage::index::SegmentIndex;
use sluice_broker::storage::scan::{parse_segment_file_name, scan_all, segment_file_name};
use sluice_protocol::{BatchHeader, RecordIter};

/// Outcome of a command: text for stdout, and the exit code (0 clean, 1 damage found).
#[derive(Debug)]
pub struct Outcome {
    pub output: String,
    pub damaged: bool,
}

/// A failure to run at all (bad path, unreadable file): exit code 2.
#[derive(Debug)]
pub struct ToolError(pub String);

fn read(path: &Path) -> Result<Vec<u8>, ToolError> {
    std::fs::read(path).map_err(|e| ToolError(format!("{}: {e}", path.display())))
}

/// Bytes as UTF-8 when printable, else hex; at most 64 bytes shown.
fn show(bytes: Option<&[u8]>) -> String {
    let Some(bytes) = bytes else {
        return "null".into();
    };
    let shown = &bytes[..bytes.len().min(64)];
    let more = if bytes.len() > 64 {
        format!("... ({} bytes)", bytes.len())
    } else {
        String::new()
    };
    match std::str::from_utf8(shown) {
        Ok(text) if text.chars().all(|c| !c.is_control()) => format!("{text:?}{more}"),
        _ => {
            let hex: String = shown.iter().map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}{more}")
        }
    }
}

fn batch_line(position: u64, header: &BatchHeader) -> String {
    // A batch compaction emptied: it only spans its offsets (consumers skip it).
    let empty = if header.record_count == 0 {
        " empty (records removed by compaction)"
    } else {
        ""
    };
    format!(
        "position {position} base {} last {} count {} bytes {} first_ts {} max_ts {} epoch {} producer {}/{}/{} attributes {:#06x} crc {:#010x} ok{empty}",
        header.base_offset,
        header.last_offset(),
        header.record_count,
        header.batch_len,
        header.first_timestamp,
        header.max_timestamp,
        header.leader_epoch,
        header.producer_id,
        header.producer_epoch,
        header.base_sequence,
        header.attributes,
        header.crc,
    )
}

/// `sluice log dump PATH [--records]`.
pub fn dump(path: &Path, records: bool) -> Result<Outcome, ToolError> {
    let bytes = read(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = match parse_segment_file_name(&name) {
        Some((base, _)) => base,
        None => BatchHeader::parse(&bytes)
            .map(|h| h.base_offset)
            .unwrap_or(0),
    };
    let mut out = format!(
        "segment {} (base offset {base}, {} bytes)\n",
        path.display(),
        bytes.len()
    );
    let mut batches = 0u64;
    let mut empty = 0u64;
    let mut record_count = 0u64;
    let report = scan_all(&bytes, base, 4096, |position, header, batch| {
        batches += 1;
        empty += u64::from(header.record_count == 0);
        record_count += u64::from(header.record_count);
        let _ = writeln!(out, "{}", batch_line(position, header));
        if records && header.record_count > 0 {
            // Compressed sections are decompressed as the broker's compaction does it.
            let Some(section) = records_section(header, batch) else {
                let _ = writeln!(
                    out,
                    "  (records not decodable: {:?} is not supported here)",
                    header.compression()
                );
                return;
            };
            for record in RecordIter::new(header, &section) {
                match record {
                    Ok(r) => {
                        let headers: Vec<String> = r
                            .headers
                            .iter()
                            .map(|(k, v)| format!("{}={}", show(Some(k)), show(*v)))
                            .collect();
                        let _ = writeln!(
                            out,
                            "  offset {} timestamp {} key {} value {} headers [{}]",
                            header.base_offset + u64::from(r.offset_delta),
                            r.timestamp,
                            show(r.key),
                            show(r.value),
                            headers.join(", ")
                        );
                    }
                    Err(error) => {
                        let _ = writeln!(out, "  (records not decodable: {error})");
                        break;
                    }
                }
            }
        }
    });
    let _ = writeln!(
        out,
        "{batches} batches ({empty} empty), {record_count} records, {} bytes of batches, next offset {}",
        report.index.size_bytes(),
        report.index.next_offset()
    );
    if let Some(padding) = report.padding_from {
        let _ = writeln!(
            out,
            "zero padding from byte {padding} to the end (never part of the log)"
        );
    }
    let damaged = match &report.stop {
        Some((position, reason)) => {
            let _ = writeln!(
                out,
                "damaged: {}: at byte {position}: {reason}",
                path.display()
            );
            true
        }
        None => false,
    };
    Ok(Outcome {
        output: out,
        damaged,
    })
}

/// `sluice log verify DIR`.
pub fn verify(dir: &Path) -> Result<Outcome, ToolError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| ToolError(format!("{}: {e}", dir.display())))?;
    let mut bases = Vec::new();
    let mut unfinished = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ToolError(format!("{}: {e}", dir.display())))?;
        match parse_segment_file_name(&entry.file_name().to_string_lossy()) {
            Some((base, "log")) => bases.push(base),
            Some((_, "log.swap" | "log.cleaned" | "index.cleaned" | "timeindex.cleaned")) => {
                unfinished.push(entry.file_name().to_string_lossy().into_owned());
            }
            _ => {}
        }
    }
    unfinished.sort();
    bases.sort_unstable();
    let mut out = String::new();
    for name in &unfinished {
        let _ = writeln!(
            out,
            "note: {name} is left by an interrupted compaction; the broker completes a .swap \
             and deletes .cleaned files when it opens the log (checked below as it is now)"
        );
    }
    if bases.is_empty() {
        return Err(ToolError(format!(
            "{}: no segment files (*.log) here",
            dir.display()
        )));
    }
    let mut expected_base: Option<u64> = None;
    let (mut total_batches, mut total_bytes) = (0u64, 0u64);
    for (i, &base) in bases.iter().enumerate() {
        let active = i + 1 == bases.len();
        let log: PathBuf = dir.join(segment_file_name(base, "log"));
        let damage = |out: &mut String, position: u64, reason: &str| {
            let _ = writeln!(
                out,
                "damaged: {}: at byte {position}: {reason}",
                log.display()
            );
            Outcome {
                output: std::mem::take(out),
                damaged: true,
            }
        };
        if let Some(expected) = expected_base {
            if expected != base {
                return Ok(damage(
                    &mut out,
                    0,
                    &format!(
                        "segment starts at offset {base}, the previous one ends at {expected}"
                    ),
                ));
            }
        }
        let bytes = read(&log)?;
        let mut boundaries = BTreeSet::new();
        let mut batches = 0u64;
        let report = scan_all(&bytes, base, 4096, |position, _, _| {
            boundaries.insert(position);
            batches += 1;
        });
        if let Some((position, reason)) = &report.stop {
            let what = if active {
                "the active segment's tail is torn or corrupt (recovery would cut it)"
            } else {
                ""
            };
            let reason = if what.is_empty() {
                reason.clone()
            } else {
                format!("{reason}; {what}")
            };
            return Ok(damage(&mut out, *position, &reason));
        }
        if let Some(padding) = report.padding_from {
            if !active {
                return Ok(damage(
                    &mut out,
                    padding,
                    "a sealed segment ends in zero padding",
                ));
            }
        }
        if !active && batches == 0 {
            return Ok(damage(&mut out, 0, "a sealed segment holds no batches"));
        }
        let scanned = report.index;
        let mut note = String::new();
        if !active {
            let offsets = dir.join(segment_file_name(base, "index"));
            let times = dir.join(segment_file_name(base, "timeindex"));
            match (std::fs::read(&offsets), std::fs::read(&times)) {
                (Ok(offset_bytes), Ok(time_bytes)) => {
                    match SegmentIndex::decode(base, &offset_bytes, &time_bytes) {
                        Err(why) => {
                            let _ = writeln!(out, "damaged: {}: index: {why}", offsets.display());
                            return Ok(Outcome {
                                output: out,
                                damaged: true,
                            });
                        }
                        Ok(index) => {
                            let agrees = index.size_bytes() == scanned.size_bytes()
                                && index.next_offset() == scanned.next_offset()
                                && index.max_timestamp() == scanned.max_timestamp();
                            let on_boundaries =
                                index.indexed_positions().all(|p| boundaries.contains(&p));
                            if !agrees || !on_boundaries {
                                let _ = writeln!(
                                out,
                                "damaged: {}: index says {} bytes / next offset {} / max timestamp {}, the log has {} / {} / {}",
                                offsets.display(),
                                index.size_bytes(),
                                index.next_offset(),
                                index.max_timestamp(),
                                scanned.size_bytes(),
                                scanned.next_offset(),
                                scanned.max_timestamp()
                            );
                                return Ok(Outcome {
                                    output: out,
                                    damaged: true,
                                });
                            }
                            note = format!(", index {} entries ok", index.offset_entries());
                        }
                    }
                }
                _ => note = ", index files missing (the broker rebuilds them on open)".into(),
            }
        }
        let _ = writeln!(
            out,
            "{} {}: offsets {}..{} ({batches} batches, {} bytes){note}",
            if active { "active" } else { "sealed" },
            log.display(),
            base,
            scanned.next_offset(),
            scanned.size_bytes()
        );
        total_batches += batches;
        total_bytes += scanned.size_bytes();
        expected_base = Some(scanned.next_offset());
    }
    let _ = writeln!(
        out,
        "ok: {} segments, {total_batches} batches, {total_bytes} bytes, offsets {}..{}",
        bases.len(),
        bases[0],
        expected_base.unwrap_or(bases[0])
    );
    Ok(Outcome {
        output: out,
        damaged: false,
    })
}
