// Package jsonfile compacts one NDJSON file that Papyra appends to (its
// JsonFilePersistence): New(Config) returns the backend. It owns the whole
// protocol for that kind: the two-pass compaction, the swap under a live
// writer and the drain of the old file (swap.go), in-place compaction that
// cuts the file's head out where that keeps exactly what a rewrite would
// (inplace.go), recovery from a crash at any point, and the scan. The
// comment at the top of json.go describes the copy protocol step by step,
// the one at the top of inplace.go the in-place one.
package jsonfile
