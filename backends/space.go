package backends

import (
	"errors"
	"fmt"

	"github.com/dustin/go-humanize"
)

// ErrNoSpace is returned when a compaction that copies the surviving records
// into new files finds too little free space on the target's filesystem for
// them. It is checked before anything is written: nothing was changed.
var ErrNoSpace = errors.New("not enough free space for a copy")

// copyMarginMin is the least room a copy leaves free: what the writer
// appends while it runs (the catch-up copies that too), journals, and
// filesystem overhead.
const copyMarginMin = 1 << 20

// CopyMargin is the room kept free beyond the need bytes a copy writes:
// 1 MiB or 1 % of need, whichever is more.
func CopyMargin(need int64) int64 {
	return max(copyMarginMin, need/100)
}

// CopyFits reports whether a copy that writes need bytes fits in free bytes
// with CopyMargin to spare.
func CopyFits(need, free int64) bool {
	return need+CopyMargin(need) <= free
}

// NoSpaceError is the error of a copy refused for lack of free space. It
// matches ErrNoSpace (errors.Is).
type NoSpaceError struct {
	// Need is what the copy would write; Margin the room kept free beyond
	// it (CopyMargin); Free what the filesystem has available.
	Need, Margin, Free int64
	// Where is the directory the copy would be written to.
	Where string
	// Method is the target's configured method (MethodAuto, MethodCopy).
	Method string
}

// Error says what the copy needs, what is free, and what the method does.
func (e *NoSpaceError) Error() string {
	hint := fmt.Sprintf(`method %q rewrites the survivors; %q compacts in place where the filesystem allows`, MethodCopy, MethodAuto)
	if e.Method == MethodAuto {
		hint = fmt.Sprintf(`method %q copies where it cannot compact in place, as here`, MethodAuto)
	}
	return fmt.Sprintf("a copy needs %s (%s of survivors and a %s margin), %s are free on %s (%s)",
		humanize.IBytes(uint64(e.Need+e.Margin)), humanize.IBytes(uint64(e.Need)), humanize.IBytes(uint64(e.Margin)),
		humanize.IBytes(uint64(max(e.Free, 0))), e.Where, hint)
}

// Is makes errors.Is(err, ErrNoSpace) true.
func (e *NoSpaceError) Is(target error) bool { return target == ErrNoSpace }

// CheckCopySpace returns nil when a copy of need bytes into the directory
// where fits in free bytes (CopyFits), and a *NoSpaceError otherwise; method
// is the target's configured method, for the error's hint.
func CheckCopySpace(need, free int64, where, method string) error {
	if CopyFits(need, free) {
		return nil
	}
	return &NoSpaceError{Need: need, Margin: CopyMargin(need), Free: free, Where: where, Method: method}
}
