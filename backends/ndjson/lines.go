package ndjson

// Shared helpers for the file backends (json, rotating): reading NDJSON
// lines forward and backward in constant memory, and copying byte ranges
// between files with large sequential IO (copy_file_range when possible).
//
// A line longer than a block is never held in memory: the readers classify
// it while they look for its end (lineScanner) and hand it out as a
// read-only mapping of the file (longLine), which the kernel pages in only
// where it is read. ClassifyLine and the other helpers here answer for such
// a line from what the reader learned, without touching its pages; the
// compactions copy kept lines by byte range, so the pages of a long line are
// read only by the rare paths that copy its bytes through memory.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/papyra/watcher/backends"
)

// BlockSize is the size of the blocks the file backends read and write.
// Tests shrink it to push lines across block boundaries.
var BlockSize = 1 << 20

// isBlankLine reports whether line holds nothing Python's str.strip() would
// leave (a blank line is not a record and is never counted as one).
func isBlankLine(line []byte) bool {
	if len(line) > 0 && line[0] == '{' {
		return false
	}
	if l := longLineOf(line); l != nil {
		return l.blank
	}
	return len(pyStrip(line)) == 0
}

// CountUnread counts the lines of [0, end) of f that retention dropped
// without parsing them. shaped counts those that look like a record — a
// line that, stripped as Python strips it, begins with '{' and ends with '}'
// — which is Papyra's count of records unless such a line is not valid JSON;
// other counts the remaining non-blank lines, which cannot be records.
func CountUnread(ctx context.Context, f *os.File, end int64) (shaped, other int64, err error) {
	lr := NewReader(f, 0, end)
	for i := 0; ; i++ {
		if i&4095 == 0 {
			if err := ctx.Err(); err != nil {
				return shaped, other, err
			}
		}
		line, _, _, err := lr.Next()
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
	if l := longLineOf(line); l != nil {
		if l.info.Record {
			return true
		}
		if l.lead != '{' {
			return false
		}
		// Else only the end is in question: pyStrip reads the line's
		// pages from the end as far as its trailing whitespace goes.
	}
	l := pyStrip(line)
	return len(l) >= 2 && l[0] == '{' && l[len(l)-1] == '}'
}

// Reader reads the lines of f between two offsets, forward, with a
// buffer of BlockSize. A line longer than the buffer is classified while
// it is read and returned as a mapping of the file (see longLine).
type Reader struct {
	f       io.ReaderAt
	off     int64 // file offset of buf[0]
	end     int64 // read no further than this
	buf     []byte
	r, w    int // buf[r:w] is read but not yet returned
	scanned int // buf[r:scanned] is known to hold no '\n'
	held    *heldLine
}

// heldLine is the long line a Reader returned last, released at the
// next call or when the reader (its buffer) is collected.
type heldLine struct{ l atomic.Pointer[longLine] }

func (h *heldLine) release() {
	if l := h.l.Swap(nil); l != nil {
		l.release()
	}
}

// NewReader returns a Reader of the lines of f in [start, end). Its buffer
// is BlockSize, or the range's length when that is shorter (no line of the
// range can be longer): reading a few appended lines allocates a few bytes,
// not a block.
func NewReader(f io.ReaderAt, start, end int64) *Reader {
	n := int64(BlockSize)
	if end-start < n {
		n = max(end-start, 1)
	}
	return &Reader{f: f, off: start, end: end, buf: make([]byte, n)}
}

// pos is the file offset of the next line.
func (lr *Reader) pos() int64 { return lr.off + int64(lr.r) }

// Next returns the next line with its '\n' and its offset. complete is false
// for a final line that has no '\n' before end. At end it returns io.EOF.
// The returned slice is valid until the next call (a long line: while the
// reader is reachable, too); it must not be written to.
func (lr *Reader) Next() (line []byte, off int64, complete bool, err error) {
	if lr.held != nil {
		lr.held.release()
	}
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
		// Make room: move the unfinished line to the front.
		if lr.r > 0 {
			n := copy(lr.buf, lr.buf[lr.r:lr.w])
			lr.off += int64(lr.r)
			lr.scanned -= lr.r
			lr.r, lr.w = 0, n
		}
		if lr.w == len(lr.buf) {
			return lr.nextLong()
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

// nextLong returns a line that does not fit in the buffer, which holds its
// start: it reads on through the buffer to the line's end, classifying what
// it reads, and returns the line as a mapping.
func (lr *Reader) nextLong() (line []byte, off int64, complete bool, err error) {
	start := lr.off
	var sc lineScanner
	sc.feed(lr.buf[:lr.w])
	pos := lr.off + int64(lr.w)
	for pos < lr.end {
		want := min(int64(len(lr.buf)), lr.end-pos)
		n, err := lr.f.ReadAt(lr.buf[:want], pos)
		if int64(n) < want {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF // the file shrank under us
			}
			lr.w, lr.scanned = 0, 0 // the line is read again from its start
			return nil, start, false, err
		}
		if i := bytes.IndexByte(lr.buf[:n], '\n'); i >= 0 {
			sc.feed(lr.buf[:i+1])
			lr.off, lr.r, lr.w, lr.scanned = pos, i+1, n, i+1
			pos += int64(i + 1)
			complete = true
			break
		}
		sc.feed(lr.buf[:n])
		pos += int64(n)
	}
	if !complete {
		lr.off, lr.r, lr.w, lr.scanned = pos, 0, 0, 0
	}
	l, line, err := holdLongLine(lr.f, start, pos-start, sc.facts())
	if err != nil {
		return nil, start, false, err
	}
	if l != nil {
		if lr.held == nil {
			// Tied to the buffer (a heap allocation the reader alone
			// holds) rather than to lr, which need not be on the heap.
			lr.held = &heldLine{}
			runtime.AddCleanup(&lr.buf[0], (*heldLine).release, lr.held)
		}
		lr.held.l.Store(l)
	}
	return line, start, complete, nil
}

// ReadBackward calls fn for every line in [start, end) of f, newest
// (last) first, with the line (its '\n' included) and its offset, until fn
// returns false. end must be a line boundary (just after a '\n', or start).
// The line slice is valid only during the call and must not be written to.
// Memory is two blocks, or the range's length when it is shorter than one
// block (it is read at once): a line longer than a block is found,
// classified and passed as a mapping of the file (see longLine).
func ReadBackward(ctx context.Context, f io.ReaderAt, start, end int64, fn func(line []byte, off int64) bool) error {
	bs := BlockSize
	var buf []byte
	if end-start <= int64(bs) {
		buf = make([]byte, max(end-start, 0)) // read in one step, nothing carried
	} else {
		buf = make([]byte, 2*bs)
	}
	var nls []int32
	carry := 0 // the start of a line whose beginning is in an older block: buf[len(buf)-carry:]; at most bs
	hi := end
	for hi > start {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(int64(bs), hi-start)
		lo := hi - n
		data := buf[len(buf)-int(n)-carry:]
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
		if ends > bs {
			// The oldest line here began in an older block and is longer
			// than a block already: find its start, and pass it as a
			// mapping.
			e := lo + int64(ends)
			s, err := lineStart(ctx, f, start, lo, buf)
			if err != nil {
				return err
			}
			more, err := passLongLine(ctx, f, s, e, buf, fn)
			if err != nil || !more {
				return err
			}
			hi, carry = s, 0
			continue
		}
		carry = ends
		copy(buf[len(buf)-carry:], data[:ends])
		hi = lo
	}
	return nil
}

// lineStart returns the offset of the line of f that holds the byte before
// hi, looking no further back than start. It reads through buf.
func lineStart(ctx context.Context, f io.ReaderAt, start, hi int64, buf []byte) (int64, error) {
	for hi > start {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		n := min(int64(len(buf)), hi-start)
		lo := hi - n
		if m, err := f.ReadAt(buf[:n], lo); int64(m) < n {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, fmt.Errorf("read at %d: %w", lo, err)
		}
		if i := bytes.LastIndexByte(buf[:n], '\n'); i >= 0 {
			return lo + int64(i) + 1, nil
		}
		hi = lo
	}
	return start, nil
}

// passLongLine classifies the line [s, e) of f, reading it forward through
// buf, and calls fn with it as a mapping (or, if f cannot be mapped, in
// memory). It returns what fn returned.
func passLongLine(ctx context.Context, f io.ReaderAt, s, e int64, buf []byte, fn func(line []byte, off int64) bool) (bool, error) {
	var sc lineScanner
	for p := s; p < e; {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		n := min(int64(len(buf)), e-p)
		if m, err := f.ReadAt(buf[:n], p); int64(m) < n {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return false, fmt.Errorf("read at %d: %w", p, err)
		}
		sc.feed(buf[:n])
		p += n
	}
	l, line, err := holdLongLine(f, s, e-s, sc.facts())
	if err != nil {
		return false, err
	}
	if l != nil {
		defer l.release()
	}
	return fn(line, s), nil
}

// longLine is a line longer than a block, handed out as a read-only shared
// mapping of its file with what a lineScanner learned about it. While it is
// mapped, the registry below finds it by the address of its first byte, so
// that ClassifyLine, isBlankLine and recordShaped answer for it without
// reading it, and Copier.Write copies it by range: its pages stay on disk or
// in the page cache, not in the process, unless a caller reads its bytes.
//
// A mapping is valid only while its file keeps its length: a caller that
// reads it after the file was truncated under it gets SIGBUS. The readers
// unmap it as soon as the caller is done with the line.
type longLine struct {
	src  io.ReaderAt // the file ...
	off  int64       // ... and the line's offset in it
	mem  []byte      // the whole mapping, from a page boundary
	line []byte      // the line in it
	nl   bool        // the line ends with '\n'
	lineFacts
}

// longLines registers the mapped long lines by their first byte.
var longLines struct {
	live atomic.Int32 // registered lines: lookups are skipped while there are none
	mu   sync.RWMutex
	m    map[*byte]*longLine
}

// longLineOf returns the registered long line b is (or is without its final
// '\n'), or nil.
func longLineOf(b []byte) *longLine {
	if longLines.live.Load() == 0 || len(b) == 0 {
		return nil
	}
	return lookupLongLine(b)
}

func lookupLongLine(b []byte) *longLine {
	longLines.mu.RLock()
	l := longLines.m[&b[0]]
	longLines.mu.RUnlock()
	if l != nil && (len(b) == len(l.line) || len(b) == len(l.line)-1 && l.nl) {
		return l
	}
	return nil
}

// holdLongLine maps the n bytes of f at off and registers them with facts.
// When f cannot be mapped it reads them into memory instead and returns a
// nil *longLine.
func holdLongLine(f io.ReaderAt, off, n int64, facts lineFacts) (*longLine, []byte, error) {
	if mem, line, ok := mapRange(f, off, n); ok {
		l := &longLine{src: f, off: off, mem: mem, line: line, nl: line[n-1] == '\n', lineFacts: facts}
		longLines.mu.Lock()
		if longLines.m == nil {
			longLines.m = map[*byte]*longLine{}
		}
		longLines.m[&line[0]] = l
		longLines.live.Add(1)
		longLines.mu.Unlock()
		return l, line, nil
	}
	line := make([]byte, n)
	if m, err := f.ReadAt(line, off); int64(m) < n {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, nil, fmt.Errorf("read at %d: %w", off, err)
	}
	return nil, line, nil
}

// release unregisters and unmaps l.
func (l *longLine) release() {
	longLines.mu.Lock()
	delete(longLines.m, &l.line[0])
	longLines.live.Add(-1)
	longLines.mu.Unlock()
	unix.Munmap(l.mem)
}

// mapRange maps the n bytes of f at off read-only; ok is false when f is not
// a file that can be mapped.
func mapRange(f io.ReaderAt, off, n int64) (mem, line []byte, ok bool) {
	sc, isConn := f.(syscall.Conn)
	if !isConn || n <= 0 || n > math.MaxInt {
		return nil, nil, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, nil, false
	}
	base := off &^ int64(os.Getpagesize()-1)
	var merr error
	err = rc.Control(func(fd uintptr) {
		mem, merr = unix.Mmap(int(fd), base, int(off+n-base), unix.PROT_READ, unix.MAP_SHARED)
	})
	if err != nil || merr != nil {
		return nil, nil, false
	}
	return mem, mem[off-base : off-base+n : off-base+n], true
}

// MaxAnomaliesPerType caps the anomalies of one type a scan lists; the rest
// are summarised in one more anomaly of that type.
var MaxAnomaliesPerType = 100

// Anomalies collects a scan's findings with a cap per type.
type Anomalies struct {
	target string
	list   []backends.Anomaly
	counts map[string]int64
	paths  map[string]string
}

// NewAnomalies returns an empty collection for the target named target.
func NewAnomalies(target string) *Anomalies {
	return &Anomalies{target: target, counts: map[string]int64{}, paths: map[string]string{}}
}

// Add records one anomaly; detail is built only when it will be listed.
func (a *Anomalies) Add(typ, path string, detail func() string) {
	a.counts[typ]++
	if a.counts[typ] <= int64(MaxAnomaliesPerType) {
		a.list = append(a.list, backends.Anomaly{Target: a.target, Type: typ, Path: path, Detail: detail()})
	} else {
		a.paths[typ] = path
	}
}

// Result returns the listed anomalies plus one summary per capped type.
func (a *Anomalies) Result() []backends.Anomaly {
	out := a.list
	for _, typ := range []string{backends.AnomalyInvalidLine, backends.AnomalyPartialLine, backends.AnomalyMissingTimestamp,
		backends.AnomalyUnknownKind, backends.AnomalyOrphanFile, backends.AnomalyLeftover, backends.AnomalyMissingData, backends.AnomalyUnreadable} {
		if n := a.counts[typ]; n > int64(MaxAnomaliesPerType) {
			out = append(out, backends.Anomaly{Target: a.target, Type: typ, Path: a.paths[typ],
				Detail: fmt.Sprintf("%d more %s anomalies not listed (%d in all)", n-int64(MaxAnomaliesPerType), typ, n)})
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

// ScanLines reports the anomalies of the NDJSON file f (named path) line by
// line: invalid lines, an unterminated last line, records without a numeric
// timestamp, records of an unknown kind; a line is named by its number
// (from 1) and its offset. A filler line (Filler) as the first line is not
// an anomaly: an in-place compaction leaves it, and Papyra accepts it.
func ScanLines(ctx context.Context, a *Anomalies, f *os.File, path string) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	lr := NewReader(f, 0, fi.Size())
	for n := int64(1); ; n++ {
		if n&4095 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		line, off, complete, err := lr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		if !complete {
			a.Add(backends.AnomalyPartialLine, path, func() string {
				return fmt.Sprintf("line %d (offset %d): unterminated final line of %d bytes, file last modified %s",
					n, off, len(line), fi.ModTime().UTC().Format(time.RFC3339))
			})
		}
		if off == 0 && complete && IsFiller(line) {
			continue // left by an in-place compaction; Papyra's scan accepts it
		}
		info, kind := classifyLineKind(line)
		switch {
		case !info.Record:
			if !complete {
				continue // reported as partial
			}
			a.Add(backends.AnomalyInvalidLine, path, func() string {
				if isBlankLine(line) {
					return fmt.Sprintf("line %d: blank line", n)
				}
				return fmt.Sprintf("line %d: not a JSON object: %s", n, lineExcerpt(line))
			})
			continue
		case !info.HasTimestamp:
			a.Add(backends.AnomalyMissingTimestamp, path, func() string {
				return fmt.Sprintf("line %d: record without a numeric top-level timestamp", n)
			})
		}
		if !knownKind(kind) {
			a.Add(backends.AnomalyUnknownKind, path, func() string {
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

// LastLineEnd returns the offset just after the last '\n' in [0, size).
func LastLineEnd(f *os.File, size int64) (int64, error) {
	// The last 4 KiB first: lines are short, and this runs at every
	// estimate refresh.
	buf := make([]byte, min(4096, max(size, 1)))
	for hi := size; hi > 0; {
		if len(buf) < BlockSize && hi < size {
			buf = make([]byte, min(int64(BlockSize), hi)) // a long last line: a block at a time
		}
		n := min(int64(len(buf)), hi)
		lo := hi - n
		if m, err := f.ReadAt(buf[:n], lo); int64(m) < n {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, fmt.Errorf("read %s: %w", f.Name(), err)
		}
		if i := bytes.LastIndexByte(buf[:n], '\n'); i >= 0 {
			return lo + int64(i) + 1, nil
		}
		hi = lo
	}
	return 0, nil
}

// PartialExpired reports whether an unterminated last line of a file last
// modified at mtime is a crash leftover rather than a write in flight. With
// no grace it is always taken for a write in flight.
func PartialExpired(mtime time.Time, grace time.Duration) bool {
	return grace > 0 && time.Since(mtime) > grace
}
