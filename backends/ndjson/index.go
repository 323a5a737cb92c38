package ndjson

// The block index of one NDJSON file: what an in-place compaction needs to
// place a retention cut, and to know that the result equals a rewrite's,
// without reading the lines it keeps.

import (
	"context"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
)

// indexBlockSize is the size an index block grows to before the next one
// starts (a block holds whole lines, at least one).
var indexBlockSize int64 = 256 << 10

// indexVerifyBlocks is how many blocks, besides the first, the last and
// the one the cut falls in, each PlanCut re-reads to check their checksum:
// the whole index is checked again every len(blocks)/indexVerifyBlocks
// compactions.
var indexVerifyBlocks = 4

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// IndexBlock summarises the lines of [Off, End).
type IndexBlock struct {
	Off, End     int64
	Records      int64   // lines that are JSON objects
	RecordBytes  int64   // their stored bytes, newlines included
	NoTS         int64   // records without a numeric top-level timestamp
	Invalid      int64   // lines that are not records (the head filler aside)
	MinTS, MaxTS float64 // over the records with a timestamp
	Sum          uint32  // CRC-32C of the bytes
}

// Index is the block index of one file (device and inode): [0, End()) is
// classified, line by line, once; later Updates read only what was
// appended. It is not safe for concurrent use.
type Index struct {
	dev, ino  uint64
	blocks    []IndexBlock
	end       int64
	fillerEnd int64 // a filler line occupies [0, fillerEnd)
	verifyAt  int   // the next block the rolling verification checks
}

// End is the end of the indexed region.
func (x *Index) End() int64 { return x.end }

// Blocks returns the index's blocks, oldest first (not to be modified).
func (x *Index) Blocks() []IndexBlock { return x.blocks }

// Records is the number of records in the indexed region.
func (x *Index) Records() int64 {
	var n int64
	for _, b := range x.blocks {
		n += b.Records
	}
	return n
}

func (x *Index) reset(dev, ino uint64) {
	*x = Index{dev: dev, ino: ino}
}

// Update brings the index up to end (a line boundary of f): when f is
// another file than the one indexed, shrank below the indexed region, or
// the first or last indexed block no longer holds what it held, the index
// starts over; then the lines of [End(), end) are classified.
func (x *Index) Update(ctx context.Context, f *os.File, end int64) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	dev, ino := fsx.InodeOf(fi)
	if dev != x.dev || ino != x.ino || end < x.end {
		x.reset(dev, ino)
	} else if len(x.blocks) > 0 {
		ok, err := x.verify(f, 0, len(x.blocks)-1)
		if err != nil {
			return err
		}
		if !ok {
			x.reset(dev, ino)
		}
	}
	return x.extend(ctx, f, end)
}

// indexParallelMin is the smallest region extend splits over two cores.
var indexParallelMin int64 = 8 << 20

// extend classifies [x.end, end): a large region in two halves at once.
func (x *Index) extend(ctx context.Context, f *os.File, end int64) error {
	start := x.end
	if end <= start {
		return nil // nothing appended
	}
	var cont *IndexBlock
	if n := len(x.blocks); n > 0 && x.blocks[n-1].End == x.end && x.blocks[n-1].End-x.blocks[n-1].Off < indexBlockSize {
		cont = &x.blocks[n-1] // the last block goes on growing
	}
	mid := start
	if end-start >= indexParallelMin && runtime.GOMAXPROCS(0) >= 2 {
		if m, err := LastLineEnd(f, start+(end-start)/2); err == nil && m > start {
			mid = m
		}
	}
	var high []IndexBlock
	var highErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		if mid > start {
			high, _, highErr = classifyRange(ctx, f, mid, end, nil)
		}
	}()
	lowEnd := end
	if mid > start {
		lowEnd = mid
	}
	low, fillerEnd, err := classifyRange(ctx, f, start, lowEnd, cont)
	<-done
	if err == nil {
		err = highErr
	}
	if err != nil {
		return err
	}
	if cont != nil {
		x.blocks = x.blocks[:len(x.blocks)-1]
	}
	x.blocks = append(append(x.blocks, low...), high...)
	if start == 0 {
		x.fillerEnd = fillerEnd
	}
	if n := len(x.blocks); n > 0 {
		x.end = x.blocks[n-1].End
	}
	x.end = max(x.end, start)
	return nil
}

// classifyRange classifies the lines of [start, end) of f into blocks,
// going on with cont (a copy is extended) when it is not nil; fillerEnd is
// the end of a filler line at offset 0.
func classifyRange(ctx context.Context, f *os.File, start, end int64, cont *IndexBlock) (blocks []IndexBlock, fillerEnd int64, err error) {
	lr := NewReader(f, start, end)
	var cur *IndexBlock
	if cont != nil {
		blocks = append(blocks, *cont)
		cur = &blocks[0]
	}
	for i := 0; ; i++ {
		if i&4095 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, 0, err
			}
		}
		line, off, complete, err := lr.Next()
		if err == io.EOF {
			return blocks, fillerEnd, nil
		}
		if err != nil {
			return nil, 0, err
		}
		if !complete {
			return nil, 0, fmt.Errorf("index %s: [%d, %d) does not end a line", f.Name(), start, end)
		}
		long := len(line) > BlockSize
		if long && cur != nil && cur.End > cur.Off {
			cur = nil // a long line is a block of its own
		}
		if cur == nil || cur.End-cur.Off >= indexBlockSize {
			blocks = append(blocks, IndexBlock{Off: off, End: off})
			cur = &blocks[len(blocks)-1]
		}
		sum := cur.Sum
		if long {
			if sum, err = streamSum(f, off, int64(len(line))); err != nil {
				return nil, 0, err
			}
		} else {
			sum = crc32.Update(sum, castagnoli, line)
		}
		if off == 0 && IsFiller(line) {
			fillerEnd = int64(len(line))
		}
		addLine(cur, line, off == 0 && IsFiller(line), sum)
		if long {
			cur = nil
		}
	}
}

// streamSum returns the CRC-32C of [off, off+n) of f, read through a
// buffer: a line longer than BlockSize is a mapping of the file, and
// reading it through the mapping would map all its pages in at once.
func streamSum(f *os.File, off, n int64) (uint32, error) {
	var sum uint32
	buf := make([]byte, min(int64(BlockSize), n))
	for p, end := off, off+n; p < end; {
		b := buf[:min(int64(len(buf)), end-p)]
		if _, err := f.ReadAt(b, p); err != nil {
			return 0, err
		}
		sum = crc32.Update(sum, castagnoli, b)
		p += int64(len(b))
	}
	return sum, nil
}

// addLine counts one line into b; sum is b's checksum with the line. A
// filler line counts as nothing.
func addLine(b *IndexBlock, line []byte, filler bool, sum uint32) {
	n := int64(len(line))
	b.End += n
	b.Sum = sum
	if filler {
		return
	}
	info := ClassifyLine(line[:len(line)-1])
	switch {
	case !info.Record:
		b.Invalid++
	case !info.HasTimestamp:
		b.Records++
		b.RecordBytes += n
		b.NoTS++
	default:
		if b.Records == b.NoTS || info.Timestamp < b.MinTS {
			b.MinTS = info.Timestamp
		}
		if b.Records == b.NoTS || info.Timestamp > b.MaxTS {
			b.MaxTS = info.Timestamp
		}
		b.Records++
		b.RecordBytes += n
	}
}

// verifyBufs are the buffers verify reads through: every refresh of an
// estimate verifies two blocks, and a daemon refreshes every target every
// few seconds.
var verifyBufs = sync.Pool{New: func() any { return new([64 << 10]byte) }}

// verify reports whether the blocks numbered in which still hold the bytes
// they were indexed from. It reads them through a pooled 64 KiB buffer.
func (x *Index) verify(f *os.File, which ...int) (bool, error) {
	pb := verifyBufs.Get().(*[64 << 10]byte)
	defer verifyBufs.Put(pb)
	buf := pb[:]
	for _, i := range which {
		if i < 0 || i >= len(x.blocks) {
			continue
		}
		b := x.blocks[i]
		var sum uint32
		for off := b.Off; off < b.End; {
			p := buf[:min(int64(len(buf)), b.End-off)]
			if _, err := f.ReadAt(p, off); err == io.EOF || err == io.ErrUnexpectedEOF {
				return false, nil
			} else if err != nil {
				return false, err
			}
			sum = crc32.Update(sum, castagnoli, p)
			off += int64(len(p))
		}
		if sum != b.Sum {
			return false, nil
		}
	}
	return true, nil
}

// CutPlan is where a retention cut falls in an indexed file.
type CutPlan struct {
	// Off is the first kept byte: [Off, End()) is kept, [0, Off) dropped.
	Off int64
	// InPlace is true when exactly the lines of [Off, End()) are kept:
	// removing [0, Off) gives the records a rewrite would keep, the same
	// bytes. Otherwise Why says what a rewrite would drop among the kept
	// lines (Off is then meaningless).
	InPlace bool
	Why     string
	// Kept and KeptBytes count the records kept; Dropped why the others
	// go. Records is the total.
	Kept, KeptBytes, Records int64
	Dropped                  backends.Dropped
	// Stale is set when a checksum showed the index no longer matches
	// the file; the index has been cleared.
	Stale bool
}

// Nothing reports whether the cut drops nothing but a filler line.
func (p CutPlan) Nothing(x *Index) bool { return p.Off <= x.fillerEnd }

// PlanCut places cut (fresh, as NewCut returns it) on the indexed region
// of f, newest first, with the exact rules of backends.Cut: a block whose
// records are all kept is taken whole; the block where the cut falls, and
// any block whose fate is mixed, is read line by line. Besides the blocks
// it reads, it checks the checksums of the first and last blocks and of a
// few more in turn; a mismatch clears the index and sets Stale.
func (x *Index) PlanCut(ctx context.Context, f *os.File, cut *backends.Cut) (CutPlan, error) {
	var p CutPlan
	r := cut.Retention()
	age := r.MaxAgeSeconds != nil
	check := []int{0, len(x.blocks) - 1}
	for k := 0; k < indexVerifyBlocks && len(x.blocks) > 0; k++ {
		check = append(check, (x.verifyAt+k)%len(x.blocks))
	}
	if len(x.blocks) > 0 {
		x.verifyAt = (x.verifyAt + indexVerifyBlocks) % len(x.blocks)
	}
	dropping := false
	for i := len(x.blocks) - 1; i >= 0; i-- {
		b := x.blocks[i]
		p.Records += b.Records
		switch {
		case !dropping && b.Invalid == 0 && (!age || (b.NoTS == 0 && b.MinTS >= cut.Cutoff())) && cut.KeepRun(b.Records, b.RecordBytes):
			p.Kept += b.Records
			p.KeptBytes += b.RecordBytes
			continue
		case dropping && cut.Done():
			p.Dropped.Invalid += b.Invalid
			switch cut.DoneReason() {
			case backends.DropCount:
				p.Dropped.Count += b.Records
			default:
				p.Dropped.Bytes += b.Records
			}
			continue
		case dropping && age && b.MaxTS < cut.Cutoff():
			p.Dropped.Invalid += b.Invalid
			p.Dropped.NoTimestamp += b.NoTS
			p.Dropped.Age += b.Records - b.NoTS
			continue
		}
		// Line by line.
		check = append(check, i)
		hole := false
		err := ReadBackward(ctx, f, b.Off, b.End, func(line []byte, off int64) bool {
			if off == 0 && off+int64(len(line)) == x.fillerEnd {
				if !dropping {
					dropping, p.Off = true, x.fillerEnd
				}
				return true
			}
			info := ClassifyLine(line[:len(line)-1])
			why := cut.Offer(info, int64(len(line)))
			if why == backends.Kept {
				if dropping {
					hole = true
					return false
				}
				p.Kept++
				p.KeptBytes += int64(len(line))
				return true
			}
			p.Dropped.Add(why)
			if !dropping {
				dropping, p.Off = true, off+int64(len(line))
			}
			return true
		})
		if err != nil {
			return p, err
		}
		if hole {
			p.Why = "a line that retention drops lies between kept records (an invalid line, a record without timestamp, or records out of time order)"
			return p, x.checkOrClear(f, check, &p)
		}
	}
	if !dropping {
		p.Off = 0
	}
	p.InPlace = true
	return p, x.checkOrClear(f, check, &p)
}

func (x *Index) checkOrClear(f *os.File, check []int, p *CutPlan) error {
	ok, err := x.verify(f, check...)
	if err != nil {
		return err
	}
	if !ok {
		x.reset(x.dev, x.ino)
		p.Stale, p.InPlace = true, false
		p.Why = "the file changed where it had already been read (not by appends): its index was discarded"
	}
	return nil
}

// AfterHeadCut updates the index for h applied to f: the blocks before
// h.Cut go, the others move by h.Collapse, and a first block covering the
// filler line and the rest of the block the cut fell in is read again.
func (x *Index) AfterHeadCut(ctx context.Context, f *os.File, h HeadCut) error {
	var rest []IndexBlock
	firstEnd := int64(-1)
	for _, b := range x.blocks {
		switch {
		case b.End <= h.Cut:
		case b.Off < h.Cut:
			firstEnd = b.End - h.Collapse
		default:
			b.Off -= h.Collapse
			b.End -= h.Collapse
			rest = append(rest, b)
		}
	}
	if firstEnd < 0 {
		firstEnd = h.Cut - h.Collapse
	}
	dev, ino, end, verifyAt := x.dev, x.ino, x.end-h.Collapse, x.verifyAt
	x.reset(dev, ino)
	if err := x.extend(ctx, f, firstEnd); err != nil {
		x.reset(dev, ino)
		return err
	}
	if len(rest) > 0 && x.end != rest[0].Off {
		x.reset(dev, ino)
		return nil
	}
	x.blocks = append(x.blocks, rest...)
	x.end = max(x.end, end)
	if len(rest) == 0 {
		x.end = firstEnd
	}
	x.verifyAt = verifyAt
	return nil
}

// IndexEstimate is what a retention would remove from the indexed region
// now, as Index.Estimate places it.
type IndexEstimate struct {
	Records, Kept, KeptBytes int64
	// Oldest is the smallest timestamp of the region's first block that
	// holds timestamped records (records are in write order); OldestKept
	// the smallest among the kept records. Each is valid when its Has is.
	Oldest, OldestKept       float64
	HasOldest, HasOldestKept bool
	// FillerEnd is the end of a filler line first in the file: bytes that
	// are neither kept nor reclaimable.
	FillerEnd int64
}

// Estimate places a fresh cut of r at now on the indexed region of f, like
// PlanCut but whatever lies between the kept records, and without checking
// checksums: blocks whose records are all kept are taken whole, blocks
// retention drops whole are skipped, and the few blocks in between are read
// line by line.
func (x *Index) Estimate(ctx context.Context, f *os.File, r backends.Retention, now time.Time) (IndexEstimate, error) {
	e := IndexEstimate{FillerEnd: x.fillerEnd}
	cut := r.NewCut(now)
	age := r.MaxAgeSeconds != nil
	keptTS := func(ts float64) {
		if !e.HasOldestKept || ts < e.OldestKept {
			e.OldestKept, e.HasOldestKept = ts, true
		}
	}
	for _, b := range x.blocks {
		e.Records += b.Records
		if !e.HasOldest && b.Records > b.NoTS {
			e.Oldest, e.HasOldest = b.MinTS, true
		}
	}
	for i := len(x.blocks) - 1; i >= 0 && !cut.Done(); i-- {
		b := x.blocks[i]
		switch {
		case b.Invalid == 0 && (!age || (b.NoTS == 0 && b.MinTS >= cut.Cutoff())) && cut.KeepRun(b.Records, b.RecordBytes):
			e.Kept += b.Records
			e.KeptBytes += b.RecordBytes
			if b.Records > b.NoTS {
				keptTS(b.MinTS)
			}
			continue
		case age && (b.Records == b.NoTS || b.MaxTS < cut.Cutoff()):
			continue // every record goes for its age (or has none)
		}
		err := ReadBackward(ctx, f, b.Off, b.End, func(line []byte, off int64) bool {
			if off == 0 && int64(len(line)) == x.fillerEnd {
				return true
			}
			info := ClassifyLine(line[:len(line)-1])
			if cut.Offer(info, int64(len(line))) == backends.Kept {
				e.Kept++
				e.KeptBytes += int64(len(line))
				if info.HasTimestamp {
					keptTS(info.Timestamp)
				}
			}
			return !cut.Done()
		})
		if err != nil {
			return e, err
		}
	}
	return e, nil
}
