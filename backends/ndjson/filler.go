package ndjson

import "bytes"

// MinFiller is the shortest filler line: "0\n".
const MinFiller = 2

// Filler returns the filler line of n bytes (n >= MinFiller) that an
// in-place compaction writes over the dropped bytes it could not cut out of
// the file (less than one filesystem block): spaces, then "0", then a
// newline. Papyra's reader parses it to 0, which is not an object, and skips
// it; Papyra's scan accepts it (a line of spaces alone would be reported as
// corrupted). The watcher's own compactions drop it.
func Filler(n int) []byte {
	if n < MinFiller {
		panic("ndjson: filler shorter than 2 bytes")
	}
	b := bytes.Repeat([]byte{' '}, n)
	b[n-2], b[n-1] = '0', '\n'
	return b
}

// IsFiller reports whether line (its newline included) is a filler line as
// Filler writes it.
func IsFiller(line []byte) bool {
	n := len(line)
	if n < MinFiller || line[n-1] != '\n' || line[n-2] != '0' {
		return false
	}
	for _, c := range line[:n-2] {
		if c != ' ' {
			return false
		}
	}
	return true
}
