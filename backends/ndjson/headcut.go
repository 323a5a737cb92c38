package ndjson

// Cutting the head of an NDJSON file out in place: the one mechanism the
// json and rotating backends use to compact without copying.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/papyra/watcher/backends/fsx"
)

// markLen is how many of the first kept bytes a HeadCut remembers to find
// them again after a crash.
const markLen = 64

// ErrTornHead is returned by HeadCut.Repair when the first kept line cannot
// be found at the head of the file: the file is left as it is.
var ErrTornHead = errors.New("the first kept line cannot be found at the head of the file")

// HeadCut is the plan to remove the head [0, Cut) of an NDJSON file in
// place, Cut being a line start. The part of the head that filesystem
// blocks cover, [0, Collapse), is cut out of the file with fsx.Collapse:
// the kept lines move to the front without being copied, and the file
// shrinks. The rest of the dropped bytes, [Collapse, Cut) (less than one
// block plus MinFiller, or a block more for each time the block boundary
// fell inside a multibyte character), becomes one filler line (Filler):
// Papyra's reader skips it and its scan accepts it.
//
// A HeadCut is JSON so that a backend can journal it before Apply; after a
// crash, Repair finishes it.
type HeadCut struct {
	Dev      uint64 `json:"dev"`
	Ino      uint64 `json:"ino"`
	Cut      int64  `json:"cut"`      // first kept byte, a line start
	Collapse int64  `json:"collapse"` // bytes fsx.Collapse removes: a multiple of the block size
	Size     int64  `json:"size"`     // the file's size when planned
	Mark     []byte `json:"mark"`     // the first kept bytes (at most 64)
}

// utf8Continuation reports whether b can only continue a UTF-8 character
// (10xxxxxx), never start one.
func utf8Continuation(b byte) bool { return b&0xC0 == 0x80 }

// Filler returns the length of the filler line Apply writes.
func (h HeadCut) Filler() int64 { return h.Cut - h.Collapse }

// PlanHeadCut plans the removal of [0, cut) from f, which must end a line
// (the byte before cut is a newline) and lie within the file. It fails with
// an error wrapping fsx.ErrNoCollapse when the filesystem cannot collapse,
// and refuses cut == 1 (a one-byte head cannot hold a filler line).
func PlanHeadCut(f *os.File, cut int64) (HeadCut, error) {
	fi, err := f.Stat()
	if err != nil {
		return HeadCut{}, err
	}
	dev, ino := fsx.InodeOf(fi)
	size := fi.Size()
	h := HeadCut{Dev: dev, Ino: ino, Cut: cut, Size: size}
	if cut < MinFiller || cut > size {
		return h, fmt.Errorf("%s: cannot cut the head at %d of %d bytes in place", f.Name(), cut, size)
	}
	var nl [1]byte
	if _, err := f.ReadAt(nl[:], cut-1); err != nil {
		return h, err
	}
	if nl[0] != '\n' {
		return h, fmt.Errorf("%s: offset %d is not a line start", f.Name(), cut)
	}
	block, err := fsx.CollapseBlock(f)
	if err != nil {
		return h, err
	}
	h.Collapse = (cut / block) * block
	if cut-h.Collapse < MinFiller {
		h.Collapse -= block
	}
	h.Collapse = max(h.Collapse, 0)
	// Between the collapse and the filler write the file starts with the
	// byte at Collapse. Papyra reads its files as strict UTF-8: a head
	// that starts inside a multibyte character would make it fail on the
	// whole file until the filler is written, where a head that starts on
	// a character is one unreadable line it skips.
	for h.Collapse > 0 {
		var b [1]byte
		if _, err := f.ReadAt(b[:], h.Collapse); err != nil {
			return h, err
		}
		if !utf8Continuation(b[0]) {
			break
		}
		h.Collapse -= block
	}
	mark := make([]byte, min(markLen, size-cut))
	if _, err := f.ReadAt(mark, cut); err != nil && err != io.EOF {
		return h, err
	}
	h.Mark = mark
	return h, nil
}

// Apply carries the plan out on f, which must be the planned file, open for
// reading and writing without O_APPEND, with no other process able to open
// it meanwhile (the caller holds a write lease, fsx.TakeLease): collapse,
// filler, fdatasync. Where the filesystem cannot collapse, the error wraps
// fsx.ErrNoCollapse and nothing was changed.
func (h HeadCut) Apply(f *os.File) error {
	if err := fsx.CrashPoint("headcut-planned"); err != nil {
		return err
	}
	if err := fsx.Collapse(f, h.Collapse); err != nil {
		return err
	}
	if err := fsx.CrashPoint("headcut-collapsed"); err != nil {
		return err
	}
	if _, err := f.WriteAt(Filler(int(h.Filler())), 0); err != nil {
		return fmt.Errorf("write the filler line of %s: %w", f.Name(), err)
	}
	if err := fsx.CrashPoint("headcut-filled"); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", f.Name(), err)
	}
	return nil
}

// HeadState is what Repair found.
type HeadState int

// Head states.
const (
	// HeadReplaced: the path holds another file now; nothing to repair.
	HeadReplaced HeadState = iota
	// HeadUntouched: the collapse did not happen; nothing was changed.
	HeadUntouched
	// HeadRepaired: the collapse happened (or was not needed) and the
	// head before the first kept line is now one filler line.
	HeadRepaired
)

// Repair finishes an interrupted Apply on f (the file now at the path),
// with the same precondition as Apply. It looks for the first kept bytes
// (Mark) where the collapse put them, and overwrites whatever precedes them
// (a torn line, dropped records, zeros) with a filler line. When they are
// still at Cut, the collapse did not happen and nothing is changed.
//
// A SIGKILL cannot interrupt the collapse itself, but a power loss can: on
// ext4 and XFS a large collapse is several journal transactions, the head
// punched out first, then the kept extents shifted down one after another,
// the size updated last. Repair finishes such a collapse: a head that is a
// hole while the mark is still at Cut is collapsed again (nothing was
// shifted yet), and a hole of Collapse bytes among the kept lines (the
// extents before it were shifted, those after it not yet) is collapsed out.
// When the mark is found nowhere near the head, it returns ErrTornHead and
// changes nothing.
func (h HeadCut) Repair(f *os.File) (HeadState, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if dev, ino := fsx.InodeOf(fi); dev != h.Dev || ino != h.Ino {
		return HeadReplaced, nil
	}
	size := fi.Size()
	at := func(p int64) bool {
		if p < 1 || p+int64(len(h.Mark)) > size {
			return false
		}
		b := make([]byte, len(h.Mark)+1)
		if _, err := f.ReadAt(b, p-1); err != nil {
			return false
		}
		return b[0] == '\n' && bytes.Equal(b[1:], h.Mark)
	}
	rem := h.Filler()
	fill := func(p int64) (HeadState, error) {
		if err := h.closeShiftHole(f, p); err != nil {
			return 0, err
		}
		var cur []byte
		if p <= 1<<20 {
			cur = make([]byte, p)
			if _, err := f.ReadAt(cur, 0); err != nil {
				return 0, err
			}
		}
		if cur == nil || !IsFiller(cur) {
			if _, err := f.WriteAt(Filler(int(p)), 0); err != nil {
				return 0, fmt.Errorf("write the filler line of %s: %w", f.Name(), err)
			}
			if err := f.Sync(); err != nil {
				return 0, fmt.Errorf("sync %s: %w", f.Name(), err)
			}
		}
		return HeadRepaired, nil
	}
	switch {
	case h.Collapse == 0:
		return fill(h.Cut)
	case at(rem):
		return fill(rem)
	case at(h.Cut) && size >= h.Size:
		if start, end, ok := fsx.NextHole(f, 0); !ok || start != 0 || end < h.Collapse {
			return HeadUntouched, nil
		}
		// The head was punched out, and the power went before anything
		// was shifted down: collapse it again.
		if err := h.Apply(f); err != nil {
			return 0, err
		}
		return HeadRepaired, nil
	}
	// A torn collapse: look for the mark in the first block or so.
	window := make([]byte, min(size, rem+h.Cut-h.Collapse+int64(len(h.Mark))+(64<<10)))
	n, err := f.ReadAt(window, 0)
	if err != nil && err != io.EOF {
		return 0, err
	}
	window = window[:n]
	if len(h.Mark) > 0 {
		for i := 0; i < len(window); {
			k := bytes.Index(window[i:], h.Mark)
			if k < 0 {
				break
			}
			p := int64(i + k)
			if p >= MinFiller && window[p-1] == '\n' {
				return fill(p)
			}
			i += k + 1
		}
	}
	return 0, fmt.Errorf("%s: %w (looked for %q near offset %d); the file is left as it is", f.Name(), ErrTornHead, h.Mark, rem)
}

// closeShiftHole collapses out of f the hole a collapse cut short by a power
// loss leaves among the kept lines, which start at p: the kept extents
// before it were shifted down, those after it were not. It is recognised by
// its place and size (a hole at a block boundary, Collapse bytes or more,
// before the end); Papyra's appends never leave a hole. Nothing else is
// touched.
func (h HeadCut) closeShiftHole(f *os.File, p int64) error {
	if h.Collapse == 0 {
		return nil
	}
	start, end, ok := fsx.NextHole(f, p)
	if !ok || end-start < h.Collapse {
		return nil
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	block, err := fsx.CollapseBlock(f)
	if err != nil || start%block != 0 || end >= fi.Size() {
		return nil
	}
	if err := fsx.CollapseAt(f, start, h.Collapse); err != nil {
		return fmt.Errorf("close the hole an interrupted collapse left at %d of %s: %w", start, f.Name(), err)
	}
	return f.Sync()
}
