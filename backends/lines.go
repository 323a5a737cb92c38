package backends

// Shared helpers for the file backends (json, rotating): reading NDJSON
// lines forward and backward in constant memory, and copying byte ranges
// between files with large sequential IO (copy_file_range when possible).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// blockSize is the size of the blocks the file backends read and write.
// Tests shrink it to push lines across block boundaries.
var blockSize = 1 << 20

// copyChunk is the most bytes one copy_file_range call (and one WaitIO
// request) moves.
var copyChunk = 8 << 20

// directCopyMin is the shortest run copied with copy_file_range; shorter
// runs go through the copier's buffer.
var directCopyMin = int64(256 << 10)

// isBlankLine reports whether line holds nothing Python's str.strip() would
// leave (a blank line is not a record and is never counted as one).
func isBlankLine(line []byte) bool {
	if len(line) > 0 && line[0] == '{' {
		return false
	}
	return len(pyStrip(line)) == 0
}

// countUnread counts the lines of [0, end) of f that retention dropped
// without parsing them. shaped counts those that look like a record — a
// line that, stripped as Python strips it, begins with '{' and ends with '}'
// — which is Papyra's count of records unless such a line is not valid JSON;
// other counts the remaining non-blank lines, which cannot be records.
func countUnread(ctx context.Context, f *os.File, end int64) (shaped, other int64, err error) {
	lr := newLineReader(f, 0, end)
	for i := 0; ; i++ {
		if i&4095 == 0 {
			if err := ctx.Err(); err != nil {
				return shaped, other, err
			}
		}
		line, _, _, err := lr.next()
		if err == io.EOF {
			return shaped, other, nil
		}
		if err != nil {
			return shaped, other, err
		}
		switch {
		case recordShaped(line):
			shaped++
		case !isBlankLine(line):
			other++
		}
	}
}

// recordShaped reports whether line, stripped, begins with '{' and ends
// with '}'.
func recordShaped(line []byte) bool {
	if n := len(line); n >= 3 && line[0] == '{' && line[n-1] == '\n' && line[n-2] == '}' {
		return true // the usual line, without stripping
	}
	l := pyStrip(line)
	return len(l) >= 2 && l[0] == '{' && l[len(l)-1] == '}'
}

// lineReader reads the lines of f between two offsets, forward, with a
// buffer of blockSize that grows only to hold a line longer than it.
type lineReader struct {
	f       io.ReaderAt
	off     int64 // file offset of buf[0]
	end     int64 // read no further than this
	buf     []byte
	r, w    int // buf[r:w] is read but not yet returned
	scanned int // buf[r:scanned] is known to hold no '\n'
}

func newLineReader(f io.ReaderAt, start, end int64) *lineReader {
	return &lineReader{f: f, off: start, end: end, buf: make([]byte, blockSize)}
}

// pos is the file offset of the next line.
func (lr *lineReader) pos() int64 { return lr.off + int64(lr.r) }

// next returns the next line with its '\n' and its offset. complete is false
// for a final line that has no '\n' before end. At end it returns io.EOF.
// The returned slice is valid until the next call.
func (lr *lineReader) next() (line []byte, off int64, complete bool, err error) {
	for {
		if i := bytes.IndexByte(lr.buf[lr.scanned:lr.w], '\n'); i >= 0 {
			j := lr.scanned + i + 1
			line, off = lr.buf[lr.r:j], lr.off+int64(lr.r)
			lr.r, lr.scanned = j, j
			return line, off, true, nil
		}
		lr.scanned = lr.w
		if lr.off+int64(lr.w) >= lr.end {
			if lr.r < lr.w {
				line, off = lr.buf[lr.r:lr.w], lr.off+int64(lr.r)
				lr.r, lr.scanned = lr.w, lr.w
				return line, off, false, nil
			}
			return nil, lr.pos(), false, io.EOF
		}
		// Make room: move the unfinished line to the front, grow if full.
		if lr.r > 0 {
			n := copy(lr.buf, lr.buf[lr.r:lr.w])
			lr.off += int64(lr.r)
			lr.scanned -= lr.r
			lr.r, lr.w = 0, n
		}
		if lr.w == len(lr.buf) {
			nb := make([]byte, 2*len(lr.buf))
			copy(nb, lr.buf[:lr.w])
			lr.buf = nb
		}
		want := min(int64(len(lr.buf)-lr.w), lr.end-(lr.off+int64(lr.w)))
		n, err := lr.f.ReadAt(lr.buf[lr.w:lr.w+int(want)], lr.off+int64(lr.w))
		lr.w += n
		if int64(n) < want {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF // the file shrank under us
			}
			return nil, lr.pos(), false, err
		}
	}
}

// readLinesBackward calls fn for every line in [start, end) of f, newest
// (last) first, with the line (its '\n' included) and its offset, until fn
// returns false. end must be a line boundary (just after a '\n', or start).
// The line slice is valid only during the call. Memory is one block plus the
// longest line.
func readLinesBackward(ctx context.Context, f io.ReaderAt, start, end int64, fn func(line []byte, off int64) bool) error {
	buf := make([]byte, 2*blockSize)
	var nls []int32
	carry := 0 // the start of a line whose beginning is in an older block: buf[len(buf)-carry:]
	hi := end
	for hi > start {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(int64(blockSize), hi-start)
		lo := hi - n
		need := int(n) + carry
		if need > len(buf) {
			nb := make([]byte, 2*need)
			copy(nb[len(nb)-carry:], buf[len(buf)-carry:])
			buf = nb
		}
		data := buf[len(buf)-need:]
		if m, err := f.ReadAt(data[:n], lo); int64(m) < n {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("read at %d: %w", lo, err)
		}
		// Newlines inside data, except its last byte (the end of the
		// newest line in it). The carried part holds no other newline.
		nls = nls[:0]
		limit := min(int(n), len(data)-1)
		for i := 0; i < limit; {
			j := bytes.IndexByte(data[i:limit], '\n')
			if j < 0 {
				break
			}
			nls = append(nls, int32(i+j))
			i += j + 1
		}
		ends := len(data)
		for k := len(nls) - 1; k >= 0; k-- {
			s := int(nls[k]) + 1
			if !fn(data[s:ends], lo+int64(s)) {
				return nil
			}
			ends = s
		}
		if lo == start {
			if ends > 0 {
				fn(data[:ends], lo)
			}
			return nil
		}
		carry = ends
		copy(buf[len(buf)-carry:], data[:ends])
		hi = lo
	}
	return nil
}

// copier writes a new file from pieces of a source file and from bytes in
// memory, sequentially, with large writes and copy_file_range for long runs.
// It calls waitIO before writing and progress after.
type copier struct {
	ctx      context.Context
	src, dst *os.File
	dstOff   int64 // bytes written to dst so far (buffered ones included)
	buf      []byte
	n        int // buffered bytes in buf[:n]
	waitIO   func(ctx context.Context, n int) error
	progress func(n int64)
	noCFR    bool // copy_file_range unavailable between these files
}

func newCopier(ctx context.Context, src, dst *os.File, waitIO func(context.Context, int) error, progress func(int64)) *copier {
	return &copier{ctx: ctx, src: src, dst: dst, buf: make([]byte, blockSize), waitIO: waitIO, progress: progress}
}

func (c *copier) wait(n int) error {
	if err := c.ctx.Err(); err != nil {
		return err
	}
	if c.waitIO != nil {
		return c.waitIO(c.ctx, n)
	}
	return nil
}

func (c *copier) flush() error {
	if c.n == 0 {
		return nil
	}
	if err := c.wait(c.n); err != nil {
		return err
	}
	if _, err := c.dst.WriteAt(c.buf[:c.n], c.dstOff-int64(c.n)); err != nil {
		return fmt.Errorf("write %s: %w", c.dst.Name(), err)
	}
	if c.progress != nil {
		c.progress(int64(c.n))
	}
	c.n = 0
	return nil
}

// write appends p.
func (c *copier) write(p []byte) error {
	for len(p) > 0 {
		if c.n == len(c.buf) {
			if err := c.flush(); err != nil {
				return err
			}
		}
		k := copy(c.buf[c.n:], p)
		c.n += k
		c.dstOff += int64(k)
		p = p[k:]
	}
	return nil
}

// copyRange appends src[off, off+n).
func (c *copier) copyRange(off, n int64) error {
	if n >= directCopyMin && !c.noCFR {
		if err := c.flush(); err != nil {
			return err
		}
		done, err := c.copyFileRange(off, n)
		if err != nil {
			return err
		}
		off, n = off+done, n-done
	}
	for n > 0 {
		if c.n == len(c.buf) {
			if err := c.flush(); err != nil {
				return err
			}
		}
		k := min(int64(len(c.buf)-c.n), n)
		m, err := c.src.ReadAt(c.buf[c.n:c.n+int(k)], off)
		if int64(m) < k {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("read %s at %d: %w", c.src.Name(), off, err)
		}
		c.n += m
		c.dstOff += k
		off += k
		n -= k
	}
	return nil
}

// copyFileRange copies with copy_file_range(2) and reports how much it
// copied; on a filesystem that cannot, it copies nothing and sets noCFR.
func (c *copier) copyFileRange(off, n int64) (int64, error) {
	var done int64
	for done < n {
		k := min(int64(copyChunk), n-done)
		if err := c.wait(int(k)); err != nil {
			return done, err
		}
		roff, woff := off+done, c.dstOff
		m, err := unix.CopyFileRange(int(c.src.Fd()), &roff, int(c.dst.Fd()), &woff, int(k), 0)
		if err != nil {
			if done == 0 && (errors.Is(err, syscall.EXDEV) || errors.Is(err, syscall.ENOSYS) ||
				errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.EPERM)) {
				c.noCFR = true
				return 0, nil
			}
			return done, fmt.Errorf("copy %s to %s: %w", c.src.Name(), c.dst.Name(), err)
		}
		if m == 0 {
			return done, fmt.Errorf("copy %s at %d: %w", c.src.Name(), roff, io.ErrUnexpectedEOF)
		}
		done += int64(m)
		c.dstOff += int64(m)
		if c.progress != nil {
			c.progress(int64(m))
		}
	}
	return done, nil
}

// sameInode reports whether a and b are the same file.
func sameInode(a, b os.FileInfo) bool {
	return a != nil && b != nil && os.SameFile(a, b)
}

// inodeOf returns the device and inode numbers of fi.
func inodeOf(fi os.FileInfo) (dev, ino uint64) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Dev), st.Ino
	}
	return 0, 0
}

// maxAnomaliesPerType caps the anomalies of one type a scan lists; the rest
// are summarised in one more anomaly of that type.
var maxAnomaliesPerType = 100

// anomalies collects a scan's findings with a cap per type.
type anomalies struct {
	target string
	list   []Anomaly
	counts map[string]int64
	paths  map[string]string
}

func newAnomalies(target string) *anomalies {
	return &anomalies{target: target, counts: map[string]int64{}, paths: map[string]string{}}
}

// add records one anomaly; detail is built only when it will be listed.
func (a *anomalies) add(typ, path string, detail func() string) {
	a.counts[typ]++
	if a.counts[typ] <= int64(maxAnomaliesPerType) {
		a.list = append(a.list, Anomaly{Target: a.target, Type: typ, Path: path, Detail: detail()})
	} else {
		a.paths[typ] = path
	}
}

// result returns the listed anomalies plus one summary per capped type.
func (a *anomalies) result() []Anomaly {
	out := a.list
	for _, typ := range []string{AnomalyInvalidLine, AnomalyPartialLine, AnomalyMissingTimestamp,
		AnomalyUnknownKind, AnomalyOrphanFile, AnomalyLeftover, AnomalyMissingData, AnomalyUnreadable} {
		if n := a.counts[typ]; n > int64(maxAnomaliesPerType) {
			out = append(out, Anomaly{Target: a.target, Type: typ, Path: a.paths[typ],
				Detail: fmt.Sprintf("%d more %s anomalies not listed (%d in all)", n-int64(maxAnomaliesPerType), typ, n)})
		}
	}
	return out
}

// knownKind reports whether raw, the JSON text of a record's kind, is one
// of Papyra's kinds.
func knownKind(raw []byte) bool {
	switch string(raw) {
	case `"event"`, `"audit"`, `"dead_letter"`:
		return true
	}
	if bytes.IndexByte(raw, '\\') < 0 {
		return false
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return false
	}
	return s == "event" || s == "audit" || s == "dead_letter"
}

// scanLines reports the anomalies of the NDJSON file f (named path) line by
// line: invalid lines, an unterminated last line, records without a numeric
// timestamp, records of an unknown kind. firstLine numbers the first line.
func scanLines(ctx context.Context, a *anomalies, f *os.File, path string) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	lr := newLineReader(f, 0, fi.Size())
	for n := int64(1); ; n++ {
		if n&4095 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		line, off, complete, err := lr.next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		if !complete {
			a.add(AnomalyPartialLine, path, func() string {
				return fmt.Sprintf("line %d (offset %d): unterminated final line of %d bytes, file last modified %s",
					n, off, len(line), fi.ModTime().UTC().Format(time.RFC3339))
			})
		}
		info, kind := classifyLine(line)
		switch {
		case !info.Record:
			if !complete {
				continue // reported as partial
			}
			a.add(AnomalyInvalidLine, path, func() string {
				if isBlankLine(line) {
					return fmt.Sprintf("line %d: blank line", n)
				}
				return fmt.Sprintf("line %d: not a JSON object: %s", n, lineExcerpt(line))
			})
			continue
		case !info.HasTimestamp:
			a.add(AnomalyMissingTimestamp, path, func() string {
				return fmt.Sprintf("line %d: record without a numeric top-level timestamp", n)
			})
		}
		if !knownKind(kind) {
			a.add(AnomalyUnknownKind, path, func() string {
				if kind == nil {
					return fmt.Sprintf("line %d: record without a kind (readers must tolerate unknown kinds)", n)
				}
				return fmt.Sprintf("line %d: unknown kind %s (readers must tolerate unknown kinds)", n, lineExcerpt(kind))
			})
		}
	}
}

// lineExcerpt shortens b for a message.
func lineExcerpt(b []byte) string {
	b = bytes.TrimRight(b, "\n")
	if len(b) > 80 {
		return strconv.Quote(string(b[:80])) + "…"
	}
	return strconv.Quote(string(b))
}
