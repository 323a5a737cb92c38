package jsonfile

// In-place compaction (method "auto").
//
// Where the lines a rewrite would keep are exactly the lines from some
// offset to the end of the file, the compaction removes the head before it
// from the file itself (ndjson.HeadCut): the block-aligned part is cut out
// with fallocate(FALLOC_FL_COLLAPSE_RANGE), and the less-than-a-block rest
// becomes one filler line ("   0"), which Papyra's reader skips and its
// scan accepts. Nothing is copied, no free space is needed, and the cost is
// that of the dropped part, not of the kept one. The file keeps its inode.
//
// It runs only when the result equals a rewrite's, record for record: the
// block index (ndjson.Index, kept between compactions and read only where
// the file grew) says whether a line a rewrite would drop (an invalid line,
// a record without timestamp under an age limit, a record older than the
// age cutoff) lies among the kept ones; then the copy runs instead. It also
// needs a filesystem that can collapse (ext4, XFS), a file with one link (a
// backup snapshot's hard link must never see its bytes move), and a write
// lease: granted only while no other process has the file open, it makes
// every open by a writer or a reader wait until the head is cut, so nobody
// reads shifted offsets. Without any of these, the copy runs and the
// report's notes say why.
//
// Crash safety: the HeadCut is journaled in the state directory before the
// file is touched. A SIGKILL between the collapse and the filler write
// leaves the kept lines whole at their new offsets, after the tail of a
// dropped line (Papyra's reader skips it as invalid JSON; its scan reports
// it as corrupted until Recover runs); Recover finds the first kept bytes
// again and writes the filler before them. A kill before the collapse
// changes nothing.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
	"github.com/papyra/watcher/backends/ndjson"
)

// Lease attempts: a writer that opens the file for each record holds it
// open for microseconds.
var (
	leaseTries = 20
	leaseWait  = 5 * time.Millisecond
)

// inPlace compacts in place when it can. It reports false, with a note in
// the report when the reason is worth knowing, when the copy must run
// instead.
func (c *compaction) inPlace(ctx context.Context) (bool, error) {
	j, rep := c.j, c.rep
	j.mu.Lock()
	defer j.mu.Unlock()
	flag := os.O_RDWR
	if c.opts.DryRun {
		flag = os.O_RDONLY
	}
	f, fi, err := c.files.dir.OpenRegular(c.files.base, flag, 0)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
		c.note("the file has %d hard links (a backup snapshot holds it): rewritten instead of compacted in place", st.Nlink)
		return false, nil
	}
	size := fi.Size()
	end, err := ndjson.LastLineEnd(f, size)
	if err != nil {
		return false, err
	}
	if size > end && ndjson.PartialExpired(fi.ModTime(), c.opts.PartialLineGrace) {
		return false, nil // the rewrite drops the crash leftover
	}
	var plan headPlan
	if j.index.End() > 0 || j.compacted {
		plan, err = c.planFromIndex(ctx, f, end)
	} else {
		plan, err = c.planByScan(ctx, f, end)
	}
	if err != nil {
		return false, err
	}
	if plan.why != "" {
		c.note("%s: rewritten instead of compacted in place", plan.why)
		return false, nil
	}
	rep.Dropped = plan.dropped
	rep.BeforeRecords, rep.AfterRecords = plan.records, plan.kept
	rep.BeforeBytes = backends.Int64(size)
	if plan.nothing {
		rep.Method = backends.MethodNone
		rep.AfterBytes = backends.Int64(size)
		return true, nil
	}
	h, err := ndjson.PlanHeadCut(f, plan.off)
	if errors.Is(err, fsx.ErrNoCollapse) {
		c.note("the filesystem cannot collapse a range of a file: rewritten instead of compacted in place")
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if c.opts.DryRun {
		rep.Method = backends.MethodInPlace
		rep.AfterBytes = backends.Int64(size - h.Collapse)
		return true, nil
	}
	return c.cutHead(ctx, f, h, end)
}

// headPlan is where the cut falls: [off, end) is kept, and exactly those
// lines would a rewrite keep, unless why says what stands in the way.
type headPlan struct {
	off           int64
	nothing       bool // nothing but a filler line to drop
	records, kept int64
	dropped       backends.Dropped
	why           string
}

// planFromIndex places the cut with the file's block index, brought up to
// date first: after the first time, only what was appended is read.
func (c *compaction) planFromIndex(ctx context.Context, f *os.File, end int64) (headPlan, error) {
	x := &c.j.index
	if c.opts.Progress != nil {
		c.opts.Progress(0, end)
	}
	if err := x.Update(ctx, f, end); err != nil {
		return headPlan{}, err
	}
	if c.opts.Progress != nil {
		c.opts.Progress(end, end)
	}
	p, err := x.PlanCut(ctx, f, c.opts.Retention.NewCut(c.opts.Now))
	if err != nil || !p.InPlace {
		return headPlan{why: p.Why}, err
	}
	return headPlan{off: p.Off, nothing: p.Nothing(x), records: p.Records, kept: p.Kept, dropped: p.Dropped}, nil
}

// planByScan places the cut as the copy does, newest line first, reading
// only the lines it keeps (pass1): the first compaction of a backend, which
// has no index yet, costs no more than a rewrite's reading. (The index is
// built by the backend's next compaction: a daemon compacts again.)
func (c *compaction) planByScan(ctx context.Context, f *os.File, end int64) (headPlan, error) {
	res, err := pass1(ctx, f, end, c.opts.Retention.NewCut(c.opts.Now), c.progress)
	if err != nil {
		return headPlan{}, err
	}
	start, holes := res.survStart, res.holes
	if len(holes) > 0 && holes[0].start == start {
		start, holes = holes[0].end, holes[1:]
	}
	if res.overflow || len(holes) > 0 {
		return headPlan{why: "a line that retention drops lies between kept records (an invalid line, a record without timestamp, or records out of time order)"}, nil
	}
	shaped, other, err := ndjson.CountUnread(ctx, f, res.unexEnd)
	if err != nil {
		return headPlan{}, err
	}
	p := headPlan{off: start, records: res.examined + shaped, kept: res.kept, dropped: res.dropped}
	p.dropped.Unexamined = shaped
	p.dropped.Invalid += other
	// A filler line left by an earlier compaction in place is not a line
	// this one drops.
	first := make([]byte, min(end, fsx.SlotSize+ndjson.MinFiller))
	if _, err := f.ReadAt(first, 0); err != nil {
		return headPlan{}, err
	}
	if i := bytes.IndexByte(first, '\n'); i >= 0 && ndjson.IsFiller(first[:i+1]) {
		p.dropped.Invalid--
		p.nothing = start <= int64(i+1)
	}
	p.nothing = p.nothing || start == 0
	return p, nil
}

// cutHead applies h to f under a write lease, journaled.
func (c *compaction) cutHead(ctx context.Context, f *os.File, h ndjson.HeadCut, end int64) (bool, error) {
	j, rep := c.j, c.rep
	// The journal is a slot allocated once (Recover creates it while there
	// is room): writing it needs no free space.
	slot, err := c.files.state.OpenSlot(c.files.headcut)
	if err != nil {
		c.note("no room for the in-place journal (%v): rewritten instead of compacted in place", err)
		return false, nil
	}
	defer slot.Close()
	if !fsx.TakeLeaseRetry(f, leaseTries, leaseWait) {
		c.note("another process kept the file open (no write lease): rewritten instead of compacted in place")
		return false, nil
	}
	defer fsx.ReleaseLease(f)
	// Nobody else has the file open now: check it is still the target,
	// grown at most.
	cur, err := c.files.dir.Lstat(c.files.base)
	fi, err2 := f.Stat()
	if err != nil || err2 != nil || !fsx.SameInode(cur, fi) {
		return false, fmt.Errorf("%s: %w", c.path, backends.ErrTargetReplaced)
	}
	if fi.Size() < end {
		return false, fmt.Errorf("%s shrank from %d to %d bytes: %w", c.path, end, fi.Size(), backends.ErrTargetReplaced)
	}
	if err := slot.Write(h); err != nil {
		return false, fmt.Errorf("journal the in-place compaction: %w", err)
	}
	if err := c.crash("inplace-journaled"); err != nil {
		return false, err
	}
	if err := h.Apply(f); err != nil {
		if errors.Is(err, fsx.ErrSimulatedCrash) {
			c.crashed = true
			return false, err
		}
		if errors.Is(err, fsx.ErrNoCollapse) {
			if err := slot.Clear(); err != nil {
				return false, err
			}
			c.note("the filesystem cannot collapse a range of a file: rewritten instead of compacted in place")
			return false, nil
		}
		return false, err // the journal stays: Recover repairs the head
	}
	if err := slot.Clear(); err != nil {
		return false, err
	}
	if err := j.index.AfterHeadCut(ctx, f, h); err != nil {
		j.index = ndjson.Index{}
	}
	j.compacted = true
	rep.Method = backends.MethodInPlace
	rep.BeforeBytes = backends.Int64(fi.Size())
	rep.AfterBytes = backends.Int64(fi.Size() - h.Collapse)
	return true, nil
}

// note adds a note to the report.
func (c *compaction) note(format string, args ...any) {
	c.rep.Notes = append(c.rep.Notes, fmt.Sprintf(format, args...))
}

// recoverHeadCut finishes an in-place compaction a crash interrupted: the
// head of the file is repaired (HeadCut.Repair) under a write lease and the
// journal cleared. When the head cannot be made sense of, the journal is
// kept and the error says where it is. With method auto it also creates the
// journal slot while there is room for it, so that a full disk can still
// be compacted in place later.
func (j *File) recoverHeadCut(files *jsonFiles) error {
	if j.cfg.Method != backends.MethodAuto {
		var h ndjson.HeadCut
		if found, err := files.state.ReadSlot(files.headcut, &h); err != nil || !found {
			return err
		}
	}
	slot, err := files.state.OpenSlot(files.headcut)
	if err != nil {
		return nil // no room for a slot: no in-place compaction happened either
	}
	defer slot.Close()
	var h ndjson.HeadCut
	found, err := slot.Read(&h)
	if err != nil || !found {
		return err
	}
	j.mu.Lock()
	j.index = ndjson.Index{}
	j.mu.Unlock()
	f, _, err := files.dir.OpenRegular(files.base, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return slot.Clear()
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if !fsx.TakeLeaseRetry(f, leaseTries, leaseWait) {
		return fmt.Errorf("repair the head of %s after an interrupted in-place compaction: another process keeps it open: %w", files.dir.PathOf(files.base), backends.ErrBusy)
	}
	defer fsx.ReleaseLease(f)
	if _, err := h.Repair(f); err != nil {
		return fmt.Errorf("repair the head of %s after an interrupted in-place compaction (journal %s kept): %w",
			files.dir.PathOf(files.base), files.state.PathOf(files.headcut), err)
	}
	return slot.Clear()
}
