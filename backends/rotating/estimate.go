package rotating

import (
	"context"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/ndjson"
)

var _ backends.EstimatorSource = (*Set)(nil)

// NewEstimator returns the estimator of the set: its segments oldest first,
// then the active file. A rotation renames files but keeps their inodes, so
// what was indexed of the active file is still known once it is segment 1.
func (s *Set) NewEstimator() backends.Estimator {
	return ndjson.NewFileEstimator(func(ctx context.Context) ([]string, error) {
		st, err := s.Stat(ctx)
		if err != nil {
			return nil, err
		}
		return st.Files, nil
	}, s.cfg.FollowSymlinks)
}
