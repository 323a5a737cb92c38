package ndjson

// The reclaimable estimator of the file backends (json, rotating): an
// incremental, sparse index per file, and the cuts of a backends.Retention placed on
// it.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"

	"golang.org/x/sys/unix"
)

// estimateMarkEvery is the distance in bytes between two marks of a file
// index: placing a cut reads at most this much.
var estimateMarkEvery int64 = 64 << 10

// estimateHeadLen is how much of the head of a file is compared on every
// refresh to notice that it was rewritten in place or replaced.
const estimateHeadLen = 4096

// estMark is one entry of a file index: a record line start and what lies
// before it.
type estMark struct {
	off     int64   // offset of a record with a timestamp
	rec     int64   // records in the file before off
	ts      float64 // that record's timestamp
	invalid int64   // bytes of lines that are not records before off
	noTS    int64   // records without a timestamp before off
	noTSB   int64   // ... and their bytes
}

// fileIndex is what the estimator remembers of one file.
type fileIndex struct {
	dev, ino uint64
	indexed  int64  // [0, indexed) is read; a line boundary
	head     []byte // the first bytes of the file, as read
	records  int64
	invalid  int64 // bytes of lines that are not records
	invalidN int64 // their count
	noTS     int64 // records without a numeric timestamp
	noTSB    int64 // their bytes
	marks    []estMark
	lastMark int64 // offset of the last mark, -estimateMarkEvery before any
	seen     bool  // used by the current refresh
}

// FileEstimator is the backends.Estimator of a sequence of NDJSON files,
// oldest first (a json target's one file, a rotating set's segments then
// its active file). It keeps, per file (device and inode), how far it has
// read and a sparse index of record offsets, counts and timestamps.
type FileEstimator struct {
	files     func(ctx context.Context) ([]string, error)
	followDir bool
	cache     map[[2]uint64]*fileIndex
}

var _ backends.Estimator = (*FileEstimator)(nil)

// NewFileEstimator returns an estimator of the files that files lists, oldest
// first, at each call. followDir is the target's follow_symlinks: whether
// the last component of the files' directory may be a symbolic link (see
// OpenForEstimate).
func NewFileEstimator(files func(ctx context.Context) ([]string, error), followDir bool) *FileEstimator {
	return &FileEstimator{files: files, followDir: followDir, cache: map[[2]uint64]*fileIndex{}}
}

// estFile is one file of a refresh: its index and its open handle.
type estFile struct {
	f    *os.File
	idx  *fileIndex
	size int64
	base int64 // records in the files before it
}

// OpenForEstimate opens the file at path read-only for an estimate, as the
// compactions open their files: relative to its directory, opened once
// (fsx.OpenDir: the directory's last component must not be a symbolic link
// unless followDir, the target's follow_symlinks), with fsx.Dir.OpenRegular
// (O_NONBLOCK|O_NOFOLLOW, then fstat: a symbolic link at the file's own name
// is refused with backends.ErrSymlink, a FIFO, a socket or a device with
// backends.ErrNotRegular, never blocking). It returns nil, nil, nil when the
// file or its directory does not exist, and an error wrapping
// backends.ErrBusy while an in-place compaction holds the file's lease.
func OpenForEstimate(path string, followDir bool) (*os.File, os.FileInfo, error) {
	dir, err := fsx.OpenDir(filepath.Dir(path), followDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	defer dir.Close()
	f, fi, err := dir.OpenRegular(filepath.Base(path), os.O_RDONLY, 0)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, nil, nil
	case errors.Is(err, unix.EWOULDBLOCK):
		// A write lease is held: an in-place compaction is cutting the
		// file's head right now.
		return nil, nil, fmt.Errorf("open %s: being compacted in place: %w", path, backends.ErrBusy)
	case err != nil:
		return nil, nil, err
	}
	return f, fi, nil
}

// TimeOfSeconds is the instant of Unix seconds s, Papyra's timestamps.
func TimeOfSeconds(s float64) time.Time { return timeOfSeconds(s) }

// refresh brings the index of f up to date: from scratch when the file is
// new to the estimator, shrank, or its head changed; otherwise only the
// appended complete lines are read.
func (e *FileEstimator) refresh(ctx context.Context, f *os.File, fi os.FileInfo) (*fileIndex, error) {
	dev, ino := fsx.InodeOf(fi)
	key := [2]uint64{dev, ino}
	idx := e.cache[key]
	size := fi.Size()
	if idx != nil {
		n := min(int64(len(idx.head)), size)
		buf := make([]byte, n)
		if _, err := f.ReadAt(buf, 0); err != nil && err != io.EOF {
			return nil, err
		}
		if size < idx.indexed || !bytes.Equal(buf, idx.head) {
			idx = nil
		}
	}
	if idx == nil {
		idx = &fileIndex{dev: dev, ino: ino, lastMark: -estimateMarkEvery}
		e.cache[key] = idx
	}
	idx.seen = true
	if size > idx.indexed {
		if err := idx.extend(ctx, f, size); err != nil {
			return nil, err
		}
	}
	return idx, nil
}

// extend indexes the complete lines in [idx.indexed, size).
func (idx *fileIndex) extend(ctx context.Context, f *os.File, size int64) error {
	lr := NewReader(f, idx.indexed, size)
	for i := 0; ; i++ {
		if i&4095 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		line, off, complete, err := lr.Next()
		if err == io.EOF || (err == nil && !complete) {
			break
		}
		if err != nil {
			return err
		}
		n := int64(len(line))
		info := ClassifyLine(line)
		switch {
		case !info.Record:
			idx.invalid += n
			idx.invalidN++
		case !info.HasTimestamp:
			idx.noTS++
			idx.noTSB += n
			idx.records++
		default:
			if off-idx.lastMark >= estimateMarkEvery {
				idx.marks = append(idx.marks, estMark{off: off, rec: idx.records, ts: info.Timestamp,
					invalid: idx.invalid, noTS: idx.noTS, noTSB: idx.noTSB})
				idx.lastMark = off
			}
			idx.records++
		}
		idx.indexed = off + n
	}
	if int64(len(idx.head)) < estimateHeadLen && idx.indexed > int64(len(idx.head)) {
		n := min(idx.indexed, estimateHeadLen)
		head := make([]byte, n)
		if _, err := f.ReadAt(head, 0); err != nil && err != io.EOF {
			return err
		}
		idx.head = head
	}
	return nil
}

// estPos is a position in the sequence of files: the start of a record, or
// the end of the sequence.
type estPos struct {
	file int     // index in the refresh's files; len(files) is the end
	off  int64   // offset in that file
	rec  int64   // records before it, over all files
	ts   float64 // timestamp of the record there (valid when hasT)
	hasT bool
}

func (a estPos) after(b estPos) bool {
	if a.file != b.file {
		return a.file > b.file
	}
	return a.off > b.off
}

// find returns the first record position at or after the mark start in file
// i that satisfies stop, scanning forward at most to the end of the indexed
// part of the files.
func findFrom(ctx context.Context, files []estFile, i int, start estMark, stop func(file int, off int64, rec int64, info backends.LineInfo) bool) (estPos, error) {
	off, rec := start.off, files[i].base+start.rec
	for ; i < len(files); i++ {
		fl := files[i]
		if off == 0 {
			rec = fl.base
		}
		lr := NewReader(fl.f, off, fl.idx.indexed)
		for {
			if err := ctx.Err(); err != nil {
				return estPos{}, err
			}
			line, loff, _, err := lr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return estPos{}, err
			}
			info := ClassifyLine(line)
			if !info.Record {
				continue
			}
			if stop(i, loff, rec, info) {
				return estPos{file: i, off: loff, rec: rec, ts: info.Timestamp, hasT: info.HasTimestamp}, nil
			}
			rec++
		}
		off = 0
	}
	return estPos{file: len(files), rec: rec}, nil
}

// markBefore returns the file and the last mark (over all files) for which
// before is false, scanning from the newest; the zero mark of the first
// file when there is none.
func markBefore(files []estFile, beyond func(i int, m estMark) bool) (int, estMark) {
	for i := len(files) - 1; i >= 0; i-- {
		ms := files[i].idx.marks
		for j := len(ms) - 1; j >= 0; j-- {
			if !beyond(i, ms[j]) {
				return i, ms[j]
			}
		}
	}
	return 0, estMark{}
}

// Estimate computes what retention r would remove from the files as of now.
func (e *FileEstimator) Estimate(ctx context.Context, now time.Time, r backends.Retention) (backends.Estimate, error) {
	est := backends.Estimate{At: now}
	paths, err := e.files(ctx)
	if err != nil {
		return est, err
	}
	for _, idx := range e.cache {
		idx.seen = false
	}
	var files []estFile
	defer func() {
		for _, fl := range files {
			fl.f.Close()
		}
	}()
	var records int64
	for _, p := range paths {
		f, fi, err := OpenForEstimate(p, e.followDir)
		if err != nil {
			return est, err
		}
		if f == nil {
			continue
		}
		idx, err := e.refresh(ctx, f, fi)
		if err != nil {
			f.Close()
			return est, err
		}
		files = append(files, estFile{f: f, idx: idx, size: fi.Size(), base: records})
		records += idx.records
		est.Bytes += fi.Size()
	}
	for k, idx := range e.cache {
		if !idx.seen {
			delete(e.cache, k)
		}
	}
	est.Records = records
	for _, fl := range files {
		if len(fl.idx.marks) > 0 {
			est.Oldest = timeOfSeconds(fl.idx.marks[0].ts)
			break
		}
	}

	// The cut: every record before it goes. Age first, then count, then
	// size, as backends.Retention does; the cut is the furthest of the three.
	cut := estPos{}
	if len(files) > 0 {
		first, err := findFrom(ctx, files, 0, estMark{}, func(int, int64, int64, backends.LineInfo) bool { return true })
		if err != nil {
			return est, err
		}
		cut = first
	}
	if r.MaxAgeSeconds != nil {
		cutoff := backends.UnixSeconds(now) - *r.MaxAgeSeconds
		i, m := markBefore(files, func(_ int, m estMark) bool { return m.ts >= cutoff })
		if len(files) > 0 {
			p, err := findFrom(ctx, files, i, m, func(_ int, _ int64, _ int64, info backends.LineInfo) bool {
				return info.HasTimestamp && info.Timestamp >= cutoff
			})
			if err != nil {
				return est, err
			}
			if p.after(cut) {
				cut = p
			}
		}
	}
	if r.MaxRecords != nil && len(files) > 0 {
		left := records - cut.rec
		if r.MaxAgeSeconds != nil {
			a, err := tailAfter(ctx, files, cut)
			if err != nil {
				return est, err
			}
			left -= a.noTS
		}
		if left > *r.MaxRecords {
			k := cut.rec + left - *r.MaxRecords
			i, m := markBefore(files, func(i int, m estMark) bool { return files[i].base+m.rec > k })
			p, err := findFrom(ctx, files, i, m, func(_ int, _ int64, rec int64, _ backends.LineInfo) bool { return rec >= k })
			if err != nil {
				return est, err
			}
			if p.after(cut) {
				cut = p
			}
		}
	}
	if r.MaxTotalBytes != nil && len(files) > 0 {
		// Keep the newest records that fit: start from the byte that far
		// from the end of the indexed data.
		var total int64
		for _, fl := range files {
			total += fl.idx.indexed
		}
		if total > *r.MaxTotalBytes {
			at := total - *r.MaxTotalBytes
			fi := 0
			for fi < len(files)-1 && at >= files[fi].idx.indexed {
				at -= files[fi].idx.indexed
				fi++
			}
			i, m := markBefore(files, func(i int, m estMark) bool { return i > fi || (i == fi && m.off > at) })
			p, err := findFrom(ctx, files, i, m, func(i int, off int64, _ int64, _ backends.LineInfo) bool {
				return i > fi || off >= at
			})
			if err != nil {
				return est, err
			}
			if p.after(cut) {
				cut = p
			}
		}
	}
	if r.MaxAgeSeconds != nil && cut.hasT {
		est.NextExpiry = timeOfSeconds(cut.ts + *r.MaxAgeSeconds)
	}

	// What goes: everything before the cut, and after it the lines that are
	// not records and (under an age limit) the records without timestamp.
	after, err := tailAfter(ctx, files, cut)
	if err != nil {
		return est, err
	}
	for i := 0; i < len(files) && i < cut.file; i++ {
		est.ReclaimableBytes += files[i].idx.indexed
	}
	if cut.file < len(files) {
		est.ReclaimableBytes += cut.off
	}
	est.ReclaimableBytes += after.invalid
	if r.MaxAgeSeconds != nil {
		est.ReclaimableBytes += after.noTSB
		est.ReclaimableRecords += after.noTS
	}
	est.ReclaimableRecords += cut.rec
	est.ReclaimableRecords = min(est.ReclaimableRecords, records)
	est.ReclaimableBytes = min(est.ReclaimableBytes, est.Bytes)
	return est, nil
}

// estTail counts what lies after a position: lines that are not records,
// and records without a timestamp.
type estTail struct {
	invalid     int64
	noTS, noTSB int64
}

// tailAfter counts what lies in the files from p on: exactly, from the
// totals of the index and the mark before p, reading at most one mark's
// block of lines.
func tailAfter(ctx context.Context, files []estFile, p estPos) (estTail, error) {
	var t estTail
	for i := p.file; i < len(files); i++ {
		idx := files[i].idx
		if i > p.file {
			t.invalid += idx.invalid
			t.noTS += idx.noTS
			t.noTSB += idx.noTSB
			continue
		}
		var m estMark
		for _, mk := range idx.marks {
			if mk.off > p.off {
				break
			}
			m = mk
		}
		t.invalid += idx.invalid - m.invalid
		t.noTS += idx.noTS - m.noTS
		t.noTSB += idx.noTSB - m.noTSB
		// Less what lies in [m.off, p.off).
		lr := NewReader(files[i].f, m.off, p.off)
		for {
			if err := ctx.Err(); err != nil {
				return t, err
			}
			line, _, _, err := lr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return t, err
			}
			info := ClassifyLine(line)
			switch {
			case !info.Record:
				t.invalid -= int64(len(line))
			case !info.HasTimestamp:
				t.noTS--
				t.noTSB -= int64(len(line))
			}
		}
	}
	return t, nil
}

// timeOfSeconds converts Papyra's fractional Unix seconds to a time.
func timeOfSeconds(s float64) time.Time {
	if math.IsNaN(s) || math.IsInf(s, 0) {
		return time.Time{}
	}
	sec, frac := math.Modf(s)
	return time.Unix(int64(sec), int64(frac*1e9))
}

// SetEstimateMarkEvery sets how many bytes apart the estimator's index
// marks are, for tests that need several marks in a small file, and returns
// a function that restores the previous spacing.
func SetEstimateMarkEvery(n int64) (restore func()) {
	old := estimateMarkEvery
	estimateMarkEvery = n
	return func() { estimateMarkEvery = old }
}
