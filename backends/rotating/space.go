package rotating

import (
	"fmt"

	"github.com/papyra/watcher/backends"
)

// checkSpace refuses a copy whose new chunks (need bytes: the survivors,
// pass 2's chunk sizes) do not fit the free space of the set's filesystem,
// before pass 3 writes anything; backends.CopyMargin leaves room for what
// the catch-up adds. The error wraps backends.ErrNoSpace; the attempt's
// abort then removes the staging directory, the placeholder and the
// journal, so that nothing is changed. Where the free space cannot be read
// the copy goes ahead (it fails cleanly with ENOSPC if it must).
func (c *rotCompaction) checkSpace(need int64) error {
	free, err := c.ds.dir.Available()
	if err != nil {
		c.r.log.Warn("free space unknown: copying without checking it", "err", err)
		return nil
	}
	if err := backends.CheckCopySpace(need, free, c.ds.dir.Path, c.r.cfg.Method); err != nil {
		return fmt.Errorf("rotating target %q: compact %s: %w", c.r.cfg.Name, c.path, err)
	}
	return nil
}
