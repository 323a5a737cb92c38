package jsonfile

import (
	"log/slog"

	"github.com/papyra/watcher/backends"
)

// checkSpace refuses a copy whose survivors do not fit the free space of
// the target's filesystem, before anything is written: the kept lines of
// the snapshot [0, end), plus the unterminated last line when it is kept,
// and backends.CopyMargin for what the catch-up adds. The error wraps
// backends.ErrNoSpace. Where the free space cannot be read the copy goes
// ahead (it fails cleanly with ENOSPC if it must). A dry run writes nothing
// and is not checked.
func (c *compaction) checkSpace(kept, end int64, tailKept bool) error {
	need := kept
	if tailKept {
		need += c.srcInfo.Size() - end
	}
	free, err := c.files.dir.Available()
	if err != nil {
		slog.Warn("free space unknown: copying without checking it", "target", c.j.cfg.Name, "err", err)
		return nil
	}
	return backends.CheckCopySpace(need, free, c.files.dir.Path, c.j.cfg.Method)
}
