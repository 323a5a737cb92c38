// Package ndjson reads Papyra's NDJSON storage format the way the watcher
// needs it: lines forward (Reader) and backward (ReadBackward) in constant
// memory, whatever their length; record classification (ClassifyLine,
// RecordKind), which decides exactly as Papyra's Python reader does; counting
// lines retention dropped without parsing them (CountUnread); the line-level
// scan that reports anomalies (ScanLines, Anomalies); the Copier that
// writes kept lines into a new file with large sequential writes and
// copy_file_range; the block index of a file (Index: records, bytes,
// timestamps and invalid lines per block, updated only where the file grew)
// that places a retention cut without reading the file again (PlanCut); the
// journaled removal of a file's head in place (HeadCut) and the filler line
// it leaves (Filler, IsFiller); and the reclaimable-space estimate of files
// (FileEstimator).
//
// The file backends (backends/jsonfile, backends/rotating) use it;
// backends/redis uses only the record classification. See lines.go for how a
// line longer than a block is handled without holding it in memory.
package ndjson
