package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/ndjson"
	"github.com/papyra/watcher/internal/urlcheck"
)

// Defaults of Config.
const (
	DefaultPrefix         = "papyra"
	DefaultSystemID       = "local"
	DefaultCommandTimeout = 5 * time.Second
	DefaultLockTTL        = 30 * time.Second
	// DefaultStepEntries bounds the entries one XTRIM call may remove
	// (the LIMIT of approximate trims), so that no call blocks the server
	// for long. It is Redis' own default LIMIT for stream-node-max-entries
	// 100.
	DefaultStepEntries = 10000
	// redisScanSample is how many of the newest entries of each stream Scan
	// reads, as Papyra's own scan does.
	redisScanSample = 100
	// redisWalkPage is how many entries one server-side counting call
	// visits.
	redisWalkPage = 2000
)

// Redis stream names under {prefix}:{system_id}:.
var redisStreams = []string{"events", "audits", "dead_letters"}

// Config configures a redis target: Papyra's RedisStreams persistence.
type Config struct {
	// Name is the target's config name.
	Name string
	// URL is redis:// or rediss://, with user:password for ACL and /db.
	URL string
	// Prefix and SystemID make the stream keys
	// {Prefix}:{SystemID}:events, :audits and :dead_letters. Defaults
	// "papyra" and "local".
	Prefix   string
	SystemID string
	// ApproxTrim trims whole stream nodes only (XTRIM ~): a stream may keep
	// up to one node (stream-node-max-entries) more than its limit. The
	// caller passes the config value, whose default is true.
	ApproxTrim bool
	// TrimUnacked lets trims remove entries that a consumer group has not
	// been delivered or has not acknowledged. By default they are kept.
	TrimUnacked bool
	// Node is this watcher's name, written into the lock. Default: the
	// hostname.
	Node string
	// CommandTimeout bounds every Redis command. Default 5s.
	CommandTimeout time.Duration
	// LockTTL is the expiry of the compaction lock; it is renewed every
	// LockTTL/3 while a compaction runs. Default 30s.
	LockTTL time.Duration
	// StepEntries is the most entries one XTRIM call removes. Default
	// DefaultStepEntries.
	StepEntries int64
}

// Streams is the backend of a redis target: Papyra's three streams
// {prefix}:{system_id}:events, :audits and :dead_letters.
//
// Compaction trims each stream with XTRIM, applying the retention in order:
// max_age_seconds as XTRIM MINID (an entry id is its write time in ms, so
// age is judged by the id, not by the record's timestamp field),
// max_records as XTRIM MAXLEN, and max_total_bytes as a MAXLEN estimated
// from MEMORY USAGE / XLEN (a report note says so); the strictest wins.
//
// No call blocks the server for long: the trim is done in approximate steps
// (XTRIM … ~ … LIMIT StepEntries) repeated until no whole node is left to
// remove, so that the stream ends within one node (stream-node-max-entries)
// of its limit. With ApproxTrim false, one exact XTRIM then removes the rest
// of that first node: the limit is met exactly and no call removes more than
// StepEntries entries.
//
// Consumer groups: unless TrimUnacked is set, entries a group has not been
// delivered (id above its last-delivered-id) or has pending (from the lowest
// pending id of XPENDING) are never trimmed: the trim becomes an XTRIM MINID
// at the lowest such id, and a report note says how many entries were held
// back and for which group. Entries appended while a compaction runs are
// never removed by it in that case.
//
// While it trims, Compact holds the lock key {prefix}:{system_id}:watcher-lock
// (LockKey; value "<node>:<process id>", the id drawn at random once per
// process; SET NX PX LockTTL in milliseconds, renewed every LockTTL/3 by a
// compare-and-PEXPIRE script, released by a compare-and-delete script), so
// that several watchers on one Redis never trim at once. A lock that holds
// this process's own value while no compaction of this process holds it is
// the leftover of an interrupted one (its release failed, for example
// because Redis restarted and kept the key in its append-only file): the
// same script that sets the lock takes it back atomically, and a report note
// says so. When another holds it (another node, an earlier process of this
// node, or a running compaction of this process), Compact returns a report
// with Skipped "held by <node>" and no error: a skip is not a failure. Dry
// runs count (XLEN, and server-side XRANGE walks of bounded pages) and take
// no lock.
//
// Every command is bounded by CommandTimeout. When Redis cannot be reached
// the error wraps ErrUnavailable and names the target and its URL with the
// password redacted; go-redis reconnects by itself once it is back.
type Streams struct {
	cfg      Config
	client   *goredis.Client
	redacted string
	streams  []string
	lockKey  string
}

// LockKey is the key of the compaction lock of a system:
// {prefix}:{system_id}:watcher-lock. Its value is "<node>:<process id>".
func LockKey(prefix, systemID string) string {
	return prefix + ":" + systemID + ":watcher-lock"
}

// RouteClientLogs sends go-redis' own log lines (it prints one per
// failed dial, that is once per attempt while a server is down) to logger at
// debug level instead of stderr. The setting is process-wide; the daemon calls
// it once at start.
func RouteClientLogs(logger *slog.Logger) {
	goredis.SetLogger(redisLogger{logger})
}

type redisLogger struct{ l *slog.Logger }

func (g redisLogger) Printf(ctx context.Context, format string, v ...any) {
	g.l.DebugContext(ctx, fmt.Sprintf(format, v...), "component", "go-redis")
}

// RedactURL returns raw with any password replaced by "xxxxx", or a fixed
// placeholder when raw is not a URL at all: it never returns a secret.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<invalid url>"
	}
	return u.Redacted()
}

// New checks cfg and connects lazily: no command is sent until the
// first call.
func New(cfg Config) (*Streams, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.SystemID == "" {
		cfg.SystemID = DefaultSystemID
	}
	if cfg.CommandTimeout <= 0 {
		cfg.CommandTimeout = DefaultCommandTimeout
	}
	if cfg.LockTTL <= 0 {
		cfg.LockTTL = DefaultLockTTL
	}
	if cfg.StepEntries <= 0 {
		cfg.StepEntries = DefaultStepEntries
	}
	if cfg.Node == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "unknown"
		}
		cfg.Node = h
	}
	opts, redacted, err := ParseURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("redis target %q: %w", cfg.Name, err)
	}
	opts.ReadTimeout = cfg.CommandTimeout
	opts.WriteTimeout = cfg.CommandTimeout
	opts.DialTimeout = min(cfg.CommandTimeout, 5*time.Second)
	opts.ContextTimeoutEnabled = true
	opts.MaxRetries = 1
	opts.DialerRetries = 2
	opts.DisableIdentity = true
	opts.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	r := &Streams{
		cfg:      cfg,
		client:   goredis.NewClient(opts),
		redacted: redacted,
		lockKey:  LockKey(cfg.Prefix, cfg.SystemID),
	}
	for _, s := range redisStreams {
		r.streams = append(r.streams, cfg.Prefix+":"+cfg.SystemID+":"+s)
	}
	return r, nil
}

// ParseURL parses a redis:// or rediss:// URL into go-redis options and
// returns the URL with its password redacted, for messages. Errors never
// contain the password. Beyond what go-redis checks, it refuses what can
// only fail when connecting, where the daemon would retry forever: a port
// outside 1–65535, a missing host or socket path, an IP address that does
// not parse, a database that is not a number from 0.
func ParseURL(raw string) (*goredis.Options, string, error) {
	if raw == "" {
		return nil, "", errors.New("redis url is empty")
	}
	u, err := urlcheck.Parse(raw)
	if err != nil {
		var ue *urlcheck.Error
		if errors.As(err, &ue) {
			return nil, ue.URL, fmt.Errorf("invalid redis url %s: %s", ue.URL, ue.Why)
		}
		return nil, "", fmt.Errorf("invalid redis url: %w", err)
	}
	redacted := u.Redacted()
	bad := func(format string, a ...any) (*goredis.Options, string, error) {
		return nil, redacted, fmt.Errorf("invalid redis url %s: %s", urlcheck.Redact(raw), fmt.Sprintf(format, a...))
	}
	switch u.Scheme {
	case "redis", "rediss":
		if u.Hostname() == "" {
			return bad("no host (want %s://HOST:PORT/DB)", u.Scheme)
		}
		switch f := strings.FieldsFunc(u.Path, func(r rune) bool { return r == '/' }); len(f) {
		case 0:
		case 1:
			if why := dbProblem(f[0]); why != "" {
				return bad("%s (want %s://HOST:PORT/DB)", why, u.Scheme)
			}
		default:
			return bad("path %q is not /DB, a database number (0, 1, 2, …)", u.Path)
		}
	case "unix":
		if strings.TrimSpace(u.Path) == "" || strings.HasSuffix(u.Path, "/") {
			return bad("no socket path (want unix:///path/to/socket)")
		}
	default:
		return bad("scheme must be redis://, rediss:// or unix://")
	}
	if db := u.Query().Get("db"); db != "" {
		if why := dbProblem(db); why != "" {
			return bad("db=%s: %s", db, why)
		}
	}
	opts, err := goredis.ParseURL(raw)
	if err != nil {
		msg := err.Error()
		if pw, ok := u.User.Password(); ok && pw != "" {
			msg = strings.ReplaceAll(msg, pw, "xxxxx")
		}
		msg = strings.ReplaceAll(msg, raw, redacted)
		return nil, redacted, fmt.Errorf("invalid redis url %s: %s", redacted, msg)
	}
	return opts, redacted, nil
}

// dbProblem says why s is not a database number, or returns "".
func dbProblem(s string) string {
	if n, err := strconv.Atoi(s); err != nil || n < 0 || strings.TrimLeft(s, "0123456789") != "" {
		return fmt.Sprintf("database %q is not a database number (0, 1, 2, …)", s)
	}
	return ""
}

// Kind returns KindRedis.
func (r *Streams) Kind() string { return backends.KindRedis }

// Streams returns the three stream keys, events first.
func (r *Streams) Streams() []string { return append([]string(nil), r.streams...) }

// Client returns the underlying go-redis client, for hooks (tracing,
// metrics, tests). Commands sent through it bypass the lock.
func (r *Streams) Client() *goredis.Client { return r.client }

// Close closes the connections.
func (r *Streams) Close() error { return r.client.Close() }

// Recover does nothing: a trim is atomic per call, so an interrupted
// compaction leaves nothing to finish or undo.
func (r *Streams) Recover(ctx context.Context) error { return nil }

// cmdCtx bounds one command by CommandTimeout.
func (r *Streams) cmdCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.cfg.CommandTimeout)
}

// fail wraps err from command op on key. Connection failures, timeouts and
// servers still loading wrap ErrUnavailable.
func (r *Streams) fail(ctx context.Context, op, key string, err error) error {
	if ctx.Err() != nil {
		if c := context.Cause(ctx); c != nil && !errors.Is(c, ctx.Err()) {
			return fmt.Errorf("redis target %q: %s %s: %w", r.cfg.Name, op, key, c)
		}
		return fmt.Errorf("redis target %q: %s %s: %w", r.cfg.Name, op, key, ctx.Err())
	}
	where := op
	if key != "" {
		where += " " + key
	}
	if unavailable(err) {
		return fmt.Errorf("redis target %q at %s: %s: %w: %v", r.cfg.Name, r.redacted, where, backends.ErrUnavailable, err)
	}
	return fmt.Errorf("redis target %q at %s: %s: %w", r.cfg.Name, r.redacted, where, err)
}

// unavailable reports whether err means the server cannot be used now
// rather than that it refused the command.
func unavailable(err error) bool {
	var re goredis.Error
	if errors.As(err, &re) {
		for _, p := range []string{"LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "BUSY "} {
			if strings.HasPrefix(re.Error(), p) {
				return true
			}
		}
		return false
	}
	return !errors.Is(err, goredis.Nil)
}

// streamID is a Redis stream entry id, ms-seq.
type streamID struct{ ms, seq uint64 }

func parseStreamID(s string) (streamID, error) {
	msS, seqS, ok := strings.Cut(s, "-")
	if !ok {
		seqS = "0"
	}
	ms, err1 := strconv.ParseUint(msS, 10, 64)
	seq, err2 := strconv.ParseUint(seqS, 10, 64)
	if err1 != nil || err2 != nil {
		return streamID{}, fmt.Errorf("invalid stream id %q", s)
	}
	return streamID{ms, seq}, nil
}

func (id streamID) String() string { return fmt.Sprintf("%d-%d", id.ms, id.seq) }

func (id streamID) less(o streamID) bool {
	return id.ms < o.ms || (id.ms == o.ms && id.seq < o.seq)
}

// next is the smallest id greater than id.
func (id streamID) next() streamID {
	if id.seq == math.MaxUint64 {
		return streamID{id.ms + 1, 0}
	}
	return streamID{id.ms, id.seq + 1}
}

// minID returns the smaller of two optional ids.
func minID(a, b *streamID) *streamID {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	case b.less(*a):
		return b
	}
	return a
}

// maxID returns the larger of two optional ids.
func maxID(a, b *streamID) *streamID {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	case a.less(*b):
		return b
	}
	return a
}

// memoryUsage is MEMORY USAGE of key (default sampling); ok is false when
// the server does not answer it (ACL, old server). A missing key is 0.
func (r *Streams) memoryUsage(ctx context.Context, key string) (int64, bool, error) {
	cctx, cancel := r.cmdCtx(ctx)
	defer cancel()
	n, err := r.client.MemoryUsage(cctx, key).Result()
	if errors.Is(err, goredis.Nil) {
		return 0, true, nil
	}
	if err != nil {
		if unavailable(err) || ctx.Err() != nil {
			return 0, false, r.fail(ctx, "MEMORY USAGE", key, err)
		}
		return 0, false, nil
	}
	return n, true, nil
}

func (r *Streams) xlen(ctx context.Context, key string) (int64, error) {
	cctx, cancel := r.cmdCtx(ctx)
	defer cancel()
	n, err := r.client.XLen(cctx, key).Result()
	if err != nil {
		return 0, r.fail(ctx, "XLEN", key, err)
	}
	return n, nil
}

// totals returns the summed XLEN of the streams and the summed MEMORY USAGE,
// nil when the server does not answer it.
func (r *Streams) totals(ctx context.Context) (int64, *int64, error) {
	var records, bytes int64
	bytesOK := true
	for _, k := range r.streams {
		n, err := r.xlen(ctx, k)
		if err != nil {
			return 0, nil, err
		}
		records += n
		b, ok, err := r.memoryUsage(ctx, k)
		if err != nil {
			return 0, nil, err
		}
		bytesOK = bytesOK && ok
		bytes += b
	}
	if !bytesOK {
		return records, nil, nil
	}
	return records, &bytes, nil
}

// Stat returns the summed MEMORY USAGE of the three streams, or -1 when the
// server does not answer MEMORY USAGE.
func (r *Streams) Stat(ctx context.Context) (backends.Stat, error) {
	var total int64
	for _, k := range r.streams {
		b, ok, err := r.memoryUsage(ctx, k)
		if err != nil {
			return backends.Stat{Bytes: -1}, err
		}
		if !ok {
			return backends.Stat{Bytes: -1}, nil
		}
		total += b
	}
	return backends.Stat{Bytes: total}, nil
}

// nodeMaxEntries is stream-node-max-entries, or 100 (Redis' default) when
// CONFIG GET is not allowed or says 0.
func (r *Streams) nodeMaxEntries(ctx context.Context) int64 {
	cctx, cancel := r.cmdCtx(ctx)
	defer cancel()
	m, err := r.client.ConfigGet(cctx, "stream-node-max-entries").Result()
	if err == nil {
		if n, err := strconv.ParseInt(m["stream-node-max-entries"], 10, 64); err == nil && n > 0 {
			return n
		}
	}
	return 100
}

// nodeLimitsText describes the stream node limits of the server, for the
// notes of approximate trims: "stream-node-max-entries = 100,
// stream-node-max-bytes = 4096" (what CONFIG GET tells; Redis' defaults
// when it is not allowed).
func (r *Streams) nodeLimitsText(ctx context.Context) string {
	entries, bytes := "100", "4096"
	cctx, cancel := r.cmdCtx(ctx)
	defer cancel()
	if m, err := r.client.ConfigGet(cctx, "stream-node-max-*").Result(); err == nil {
		if v, ok := m["stream-node-max-entries"]; ok {
			entries = v
		}
		if v, ok := m["stream-node-max-bytes"]; ok {
			bytes = v
		}
	}
	return fmt.Sprintf("stream-node-max-entries = %s, stream-node-max-bytes = %s", entries, bytes)
}

// Server-side walkers: visit up to ARGV[3] entries of a range and return how
// many there were and the last id, without sending the entries over the
// wire. Each call does bounded work.
var (
	walkFwd = goredis.NewScript(`local r = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', tonumber(ARGV[3]))
local n = #r
if n == 0 then return {0, ''} end
return {n, r[n][1]}`)
	walkRev = goredis.NewScript(`local r = redis.call('XREVRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', tonumber(ARGV[3]))
local n = #r
if n == 0 then return {0, ''} end
return {n, r[n][1]}`)
)

// walk visits entries of key from start towards end (XRANGE syntax; with
// reverse, start is the high end), in pages, until limit entries were seen
// (limit <= 0: no limit) or the range ends. It returns the count and the id
// of the last entry visited.
func (r *Streams) walk(ctx context.Context, key string, reverse bool, start, end string, limit int64) (int64, string, error) {
	var total int64
	last := ""
	for limit <= 0 || total < limit {
		page := int64(redisWalkPage)
		if limit > 0 {
			page = min(page, limit-total)
		}
		script := walkFwd
		if reverse {
			script = walkRev
		}
		cctx, cancel := r.cmdCtx(ctx)
		res, err := script.Run(cctx, r.client, []string{key}, start, end, page).Slice()
		cancel()
		if err != nil {
			return 0, "", r.fail(ctx, "XRANGE (script)", key, err)
		}
		if len(res) != 2 {
			return 0, "", fmt.Errorf("redis target %q: XRANGE %s: unexpected script reply %v", r.cfg.Name, key, res)
		}
		n, _ := res[0].(int64)
		id, _ := res[1].(string)
		if n == 0 {
			break
		}
		total += n
		last = id
		start = "(" + id
		if n < page {
			break
		}
	}
	return total, last, nil
}

// countBelow counts the entries of key with an id below bound.
func (r *Streams) countBelow(ctx context.Context, key string, bound streamID) (int64, error) {
	n, _, err := r.walk(ctx, key, false, "-", "("+bound.String(), 0)
	return n, err
}

// countBetween counts the entries of key with lo <= id < hi.
func (r *Streams) countBetween(ctx context.Context, key string, lo, hi streamID) (int64, error) {
	if !lo.less(hi) {
		return 0, nil
	}
	n, _, err := r.walk(ctx, key, false, lo.String(), "("+hi.String(), 0)
	return n, err
}

// holdBack is the oldest entry a consumer group still needs.
type holdBack struct {
	id     streamID // entries with id >= id are kept
	group  string
	reason string // "pending" or "undelivered"
}

// groupHold returns the oldest id any consumer group of key has pending or
// not yet been delivered, or nil when the stream has no group.
func (r *Streams) groupHold(ctx context.Context, key string) (*holdBack, []string, error) {
	cctx, cancel := r.cmdCtx(ctx)
	groups, err := r.client.XInfoGroups(cctx, key).Result()
	cancel()
	if err != nil {
		if goredis.HasErrorPrefix(err, "ERR no such key") || errors.Is(err, goredis.Nil) {
			return nil, nil, nil
		}
		return nil, nil, r.fail(ctx, "XINFO GROUPS", key, err)
	}
	var hold *holdBack
	var names []string
	for _, g := range groups {
		names = append(names, g.Name)
		last, err := parseStreamID(g.LastDeliveredID)
		if err != nil {
			return nil, nil, fmt.Errorf("redis target %q: XINFO GROUPS %s: group %q: %w", r.cfg.Name, key, g.Name, err)
		}
		h := holdBack{id: last.next(), group: g.Name, reason: "undelivered"}
		if g.Pending > 0 {
			cctx, cancel := r.cmdCtx(ctx)
			p, err := r.client.XPending(cctx, key, g.Name).Result()
			cancel()
			if err != nil {
				return nil, nil, r.fail(ctx, "XPENDING", key+" "+g.Name, err)
			}
			if p.Count > 0 {
				low, err := parseStreamID(p.Lower)
				if err != nil {
					return nil, nil, fmt.Errorf("redis target %q: XPENDING %s %s: %w", r.cfg.Name, key, g.Name, err)
				}
				if low.less(h.id) {
					h = holdBack{id: low, group: g.Name, reason: "pending"}
				}
			}
		}
		if hold == nil || h.id.less(hold.id) {
			hold = &h
		}
	}
	return hold, names, nil
}

// bytesPerEntry estimates the stored size of one entry of key: MEMORY USAGE
// divided by XLEN when the server answers it, else the mean size of the
// newest entries' data plus a newline.
func (r *Streams) bytesPerEntry(ctx context.Context, key string, n int64) (float64, string, error) {
	if n == 0 {
		return 0, "", nil
	}
	cctx, cancel := r.cmdCtx(ctx)
	usage, err := r.client.MemoryUsage(cctx, key, 10).Result()
	cancel()
	if err == nil && usage > 0 {
		return float64(usage) / float64(n), "MEMORY USAGE / XLEN", nil
	}
	if err != nil && (unavailable(err) || ctx.Err() != nil) {
		return 0, "", r.fail(ctx, "MEMORY USAGE", key, err)
	}
	cctx, cancel = r.cmdCtx(ctx)
	msgs, err := r.client.XRevRangeN(cctx, key, "+", "-", redisScanSample).Result()
	cancel()
	if err != nil {
		return 0, "", r.fail(ctx, "XREVRANGE", key, err)
	}
	var sum int64
	for _, m := range msgs {
		if d, ok := m.Values["data"].(string); ok {
			sum += int64(len(d)) + 1
		}
	}
	if len(msgs) == 0 || sum == 0 {
		return 0, "", nil
	}
	return float64(sum) / float64(len(msgs)), "mean data size of the newest entries", nil
}

// trimMinID removes every entry of key below bound in bounded steps:
// approximate steps of at most StepEntries entries (whole nodes) until none
// is left to remove, then, for exact trims, one exact XTRIM that removes the
// rest of the first node. It returns the entries removed.
func (r *Streams) trimMinID(ctx context.Context, key string, bound streamID, progress func(int64)) (int64, error) {
	id := bound.String()
	return r.trimInSteps(ctx, key, "XTRIM MINID", -1, progress,
		func(ctx context.Context) *goredis.IntCmd {
			return r.client.XTrimMinIDApprox(ctx, key, id, r.cfg.StepEntries)
		},
		func(ctx context.Context) *goredis.IntCmd { return r.client.XTrimMinID(ctx, key, id) })
}

// trimMaxLen keeps the newest maxLen entries of key, in bounded steps as
// trimMinID does. excess is how many entries were over the limit when the
// trim began: the approximate steps stop once that many are gone, so that a
// writer appending faster than the steps remove cannot keep them going.
func (r *Streams) trimMaxLen(ctx context.Context, key string, maxLen, excess int64, progress func(int64)) (int64, error) {
	return r.trimInSteps(ctx, key, "XTRIM MAXLEN", excess, progress,
		func(ctx context.Context) *goredis.IntCmd {
			return r.client.XTrimMaxLenApprox(ctx, key, maxLen, r.cfg.StepEntries)
		},
		func(ctx context.Context) *goredis.IntCmd { return r.client.XTrimMaxLen(ctx, key, maxLen) })
}

// trimInSteps runs approximate steps until one removes nothing (or, with
// excess >= 0, until excess entries are gone), then, for exact trims, the
// exact command once. Each call has its own timeout.
func (r *Streams) trimInSteps(ctx context.Context, key, name string, excess int64, progress func(int64),
	approx, exact func(context.Context) *goredis.IntCmd) (int64, error) {
	var total int64
	step := func(cmd func(context.Context) *goredis.IntCmd, what string) (int64, error) {
		cctx, cancel := r.cmdCtx(ctx)
		defer cancel()
		n, err := cmd(cctx).Result()
		if err != nil {
			return 0, r.fail(ctx, what, key, err)
		}
		total += n
		progress(n)
		return n, nil
	}
	for excess < 0 || total < excess {
		n, err := step(approx, name+" ~")
		if err != nil {
			return total, err
		}
		if n == 0 {
			break
		}
	}
	if !r.cfg.ApproxTrim {
		if _, err := step(exact, name); err != nil {
			return total, err
		}
	}
	return total, nil
}

// streamPlan is what retention asks of one stream.
type streamPlan struct {
	key string
	len int64
	// ageBound: entries with a smaller id are older than max_age_seconds.
	ageBound *streamID
	// keep is the count limit (max_records, or the max_total_bytes
	// estimate, whichever is smaller); -1 for none. keepRecords is
	// max_records alone, -1 for none.
	keep, keepRecords int64
	// countBound: with consumer groups, the count limit as an id (the
	// oldest entry it keeps), computed on the stream as it was.
	countBound *streamID
	hold       *holdBack
	groups     []string
}

// plan reads what is needed to trim key.
func (r *Streams) plan(ctx context.Context, key string, opts backends.CompactOptions, now time.Time, rep *backends.Report) (*streamPlan, error) {
	p := &streamPlan{key: key, keep: -1, keepRecords: -1}
	n, err := r.xlen(ctx, key)
	if err != nil {
		return nil, err
	}
	p.len = n
	if n == 0 {
		return p, nil
	}
	ret := opts.Retention
	if ret.MaxAgeSeconds != nil {
		cutoff := backends.UnixSeconds(now) - *ret.MaxAgeSeconds
		if ms := math.Ceil(cutoff * 1000); ms > 0 {
			b := streamID{ms: uint64(min(ms, float64(math.MaxInt64)))}
			p.ageBound = &b
		}
	}
	if ret.MaxRecords != nil {
		p.keep, p.keepRecords = *ret.MaxRecords, *ret.MaxRecords
	}
	if ret.MaxTotalBytes != nil {
		per, how, err := r.bytesPerEntry(ctx, key, n)
		if err != nil {
			return nil, err
		}
		if per > 0 {
			kb := int64(float64(*ret.MaxTotalBytes) / per)
			if p.keep < 0 || kb < p.keep {
				p.keep = kb
			}
			rep.Notes = append(rep.Notes, fmt.Sprintf(
				"%s: max_total_bytes %d enforced as an estimated %d entries at %.0f bytes per entry (%s)",
				key, *ret.MaxTotalBytes, kb, per, how))
		}
	}
	hold, groups, err := r.groupHold(ctx, key)
	if err != nil {
		return nil, err
	}
	p.groups = groups
	if len(groups) > 0 && r.cfg.TrimUnacked {
		rep.Notes = append(rep.Notes, fmt.Sprintf(
			"%s: trim_unacked is set: entries consumer groups %s have not been delivered or acknowledged may be trimmed",
			key, strings.Join(groups, ", ")))
	} else {
		p.hold = hold
	}
	if p.hold != nil && p.keep >= 0 && p.len > p.keep {
		// The count limit as an id: the oldest entry it keeps.
		var id string
		excess := p.len - p.keep
		if p.keep == 0 {
			// Keep nothing: the bound is past the newest entry.
			cctx, cancel := r.cmdCtx(ctx)
			msgs, err := r.client.XRevRangeN(cctx, key, "+", "-", 1).Result()
			cancel()
			if err != nil {
				return nil, r.fail(ctx, "XREVRANGE", key, err)
			}
			if len(msgs) == 1 {
				last, err := parseStreamID(msgs[0].ID)
				if err != nil {
					return nil, err
				}
				b := last.next()
				p.countBound = &b
			}
		} else {
			if excess < p.keep {
				_, id, err = r.walk(ctx, key, false, "-", "+", excess+1)
			} else {
				_, id, err = r.walk(ctx, key, true, "+", "-", p.keep)
			}
			if err != nil {
				return nil, err
			}
			if id != "" {
				b, err := parseStreamID(id)
				if err != nil {
					return nil, err
				}
				p.countBound = &b
			}
		}
	}
	return p, nil
}

// Compact trims the three streams to the retention in opts; see Redis for
// what is trimmed and how.
func (r *Streams) Compact(ctx context.Context, opts backends.CompactOptions) (rep backends.Report, err error) {
	start := time.Now()
	rep = backends.Report{Target: r.cfg.Name, Backend: backends.KindRedis, StartedAt: start, DryRun: opts.DryRun, Node: r.cfg.Node}
	defer func() {
		rep.DurationMS = time.Since(start).Milliseconds()
		if err != nil {
			rep.Error = err.Error()
		}
	}()
	if err := opts.Retention.Validate(); err != nil {
		return rep, fmt.Errorf("redis target %q: %w", r.cfg.Name, err)
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	if !opts.DryRun {
		l, holder, err := r.acquire(ctx)
		if err != nil {
			return rep, err
		}
		if l == nil {
			// Not a failure: the holder is compacting these streams.
			rep.Skipped = "held by " + holder
			return rep, nil
		}
		if l.takenBack {
			rep.Notes = append(rep.Notes, fmt.Sprintf(
				"took back this process's own lock %s, left by an interrupted compaction (for example across a Redis restart)", r.lockKey))
		}
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		stop := l.keep(ctx, cancel)
		defer func() {
			stop()
			cancel(nil)
			if rerr := l.release(); rerr != nil && err == nil {
				rep.Notes = append(rep.Notes, "releasing the lock: "+rerr.Error())
			}
		}()
	}

	before, beforeBytes, err := r.totals(ctx)
	if err != nil {
		return rep, err
	}
	rep.BeforeRecords, rep.BeforeBytes = before, beforeBytes

	var plans []*streamPlan
	var planned int64
	for _, k := range r.streams {
		p, err := r.plan(ctx, k, opts, now, &rep)
		if err != nil {
			return rep, err
		}
		plans = append(plans, p)
		if p.keep >= 0 && p.len > p.keep {
			planned += p.len - p.keep
		}
	}

	if opts.DryRun {
		var removed int64
		for _, p := range plans {
			n, err := r.dryRun(ctx, p, &rep)
			if err != nil {
				return rep, err
			}
			removed += n
		}
		rep.AfterRecords = before - removed
		if beforeBytes != nil && before > 0 {
			rep.AfterBytes = backends.Int64(*beforeBytes * rep.AfterRecords / before)
			rep.Notes = append(rep.Notes, "dry run: after_bytes is an estimate proportional to the entries kept")
		}
		if r.cfg.ApproxTrim && removed > 0 {
			rep.Notes = append(rep.Notes, "dry run: approximate trims may keep up to one stream node per stream more than counted")
		}
		rep.Method = backends.MethodNone
		if removed > 0 {
			rep.Method = backends.MethodTrim
		}
		rep.Finish()
		return rep, nil
	}

	var done int64
	progress := func(n int64) {
		done += n
		if opts.Progress != nil {
			opts.Progress(done, max(planned, done))
		}
	}
	var trimmed int64
	for _, p := range plans {
		n, err := r.trimStream(ctx, p, &rep, progress)
		trimmed += n
		if err != nil {
			return rep, err
		}
	}
	after, afterBytes, err := r.totals(ctx)
	if err != nil {
		return rep, err
	}
	rep.AfterRecords, rep.AfterBytes = after, afterBytes
	if app := after - (before - trimmed); app > 0 {
		rep.AppendedDuring = app
	}
	rep.Method = backends.MethodNone
	if trimmed > 0 {
		rep.Method = backends.MethodTrim
	}
	rep.Finish()
	return rep, nil
}

// attributeCount splits n entries removed by the count phase between the
// max_records and the max_total_bytes limits.
func attributeCount(rep *backends.Report, p *streamPlan, lenBefore, n int64) {
	byRecords := n
	if p.keepRecords < 0 {
		byRecords = 0
	} else if p.keep < p.keepRecords {
		byRecords = min(n, max(0, lenBefore-p.keepRecords))
	}
	rep.Dropped.Count += byRecords
	rep.Dropped.Bytes += n - byRecords
}

// trimStream applies p and returns the entries removed. With approximate
// trims, a note says how many entries the trims left over the limits:
// Redis removes whole stream nodes only.
func (r *Streams) trimStream(ctx context.Context, p *streamPlan, rep *backends.Report, progress func(int64)) (total int64, err error) {
	if p.len == 0 {
		return 0, nil
	}
	// overCount: entries the count phase left over the count limit;
	// ageBound, countBound: the bounds the MINID trims aimed at.
	var overCount int64
	var ageBound, countBound *streamID
	if r.cfg.ApproxTrim {
		defer func() {
			if err == nil {
				err = r.noteLeftOver(ctx, p, rep, overCount, ageBound, countBound)
			}
		}()
	}
	if p.hold == nil {
		if p.ageBound != nil {
			ageBound = p.ageBound
			n, err := r.trimMinID(ctx, p.key, *p.ageBound, progress)
			total += n
			rep.Dropped.Age += n
			if err != nil {
				return total, err
			}
		}
		if p.keep >= 0 {
			lenBefore, err := r.xlen(ctx, p.key)
			if err != nil {
				return total, err
			}
			n, err := r.trimMaxLen(ctx, p.key, p.keep, lenBefore-p.keep, progress)
			total += n
			attributeCount(rep, p, lenBefore, n)
			if err != nil {
				return total, err
			}
			overCount = max(0, lenBefore-n-p.keep)
		}
		return total, nil
	}

	// Consumer groups: every trim is a MINID no higher than the hold.
	hold := &p.hold.id
	if b := minID(p.ageBound, hold); p.ageBound != nil {
		ageBound = b
		n, err := r.trimMinID(ctx, p.key, *b, progress)
		total += n
		rep.Dropped.Age += n
		if err != nil {
			return total, err
		}
	}
	if p.countBound != nil {
		lenBefore, err := r.xlen(ctx, p.key)
		if err != nil {
			return total, err
		}
		countBound = minID(p.countBound, hold)
		n, err := r.trimMinID(ctx, p.key, *countBound, progress)
		total += n
		attributeCount(rep, p, lenBefore, n)
		if err != nil {
			return total, err
		}
	}
	if want := maxID(p.ageBound, p.countBound); want != nil && hold.less(*want) {
		held, err := r.countBetween(ctx, p.key, *hold, *want)
		if err != nil {
			return total, err
		}
		if held > 0 {
			rep.Notes = append(rep.Notes, holdNote(p, held))
		}
	}
	return total, nil
}

// noteLeftOver adds the note of an approximate trim that left entries
// over the limits of p: overCount over the count limit (a MAXLEN trim), or
// the entries still below ageBound and countBound (MINID trims), counted
// now.
func (r *Streams) noteLeftOver(ctx context.Context, p *streamPlan, rep *backends.Report, overCount int64, ageBound, countBound *streamID) error {
	var parts []string
	if countBound != nil {
		n, err := r.countBelow(ctx, p.key, *countBound)
		if err != nil {
			return err
		}
		overCount = n
	}
	if overCount > 0 {
		limit := "max_records"
		if p.keep != p.keepRecords {
			limit = "the max_total_bytes estimate"
		}
		parts = append(parts, fmt.Sprintf("%d %s over %s", overCount, entries(overCount), limit))
	}
	if ageBound != nil {
		n, err := r.countBelow(ctx, p.key, *ageBound)
		if err != nil {
			return err
		}
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s older than max_age_seconds", n, entries(n)))
		}
	}
	if len(parts) > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf(
			"approximate trim left %s on %s: Redis trims whole stream nodes only (%s); set approx_trim = false for an exact trim",
			strings.Join(parts, " and "), p.key, r.nodeLimitsText(ctx)))
	}
	return nil
}

func entries(n int64) string {
	if n == 1 {
		return "entry"
	}
	return "entries"
}

func holdNote(p *streamPlan, held int64) string {
	return fmt.Sprintf("%s: held back %d entries that retention would remove: consumer group %q has %s entries from id %s (set trim_unacked to trim them)",
		p.key, held, p.hold.group, p.hold.reason, p.hold.id)
}

// dryRun counts what trimStream would remove, without changing anything.
func (r *Streams) dryRun(ctx context.Context, p *streamPlan, rep *backends.Report) (int64, error) {
	if p.len == 0 {
		return 0, nil
	}
	var hold *streamID
	if p.hold != nil {
		hold = &p.hold.id
	}
	var age int64
	if p.ageBound != nil {
		var err error
		if age, err = r.countBelow(ctx, p.key, *minID(p.ageBound, hold)); err != nil {
			return 0, err
		}
	}
	rep.Dropped.Age += age
	left := p.len - age
	var count int64
	if hold == nil {
		if p.keep >= 0 && left > p.keep {
			count = left - p.keep
		}
	} else if p.countBound != nil {
		all, err := r.countBelow(ctx, p.key, *minID(p.countBound, hold))
		if err != nil {
			return 0, err
		}
		count = max(0, all-age)
	}
	attributeCount(rep, p, left, count)
	if hold != nil {
		if want := maxID(p.ageBound, p.countBound); want != nil && hold.less(*want) {
			held, err := r.countBetween(ctx, p.key, *hold, *want)
			if err != nil {
				return 0, err
			}
			if held > 0 {
				rep.Notes = append(rep.Notes, holdNote(p, held))
			}
		}
	}
	return age + count, nil
}

// Scan samples the newest entries of each stream (XREVRANGE COUNT 100, as
// Papyra's scan does) and reports entries Papyra would not have written:
// without a data field, data that is not a JSON object, without a numeric
// timestamp, or of an unknown kind. A key that is not a stream is reported
// as unreadable.
func (r *Streams) Scan(ctx context.Context) ([]backends.Anomaly, error) {
	var out []backends.Anomaly
	add := func(typ, key, detail string) {
		out = append(out, backends.Anomaly{Target: r.cfg.Name, Type: typ, Path: key, Detail: detail})
	}
	for _, k := range r.streams {
		cctx, cancel := r.cmdCtx(ctx)
		msgs, err := r.client.XRevRangeN(cctx, k, "+", "-", redisScanSample).Result()
		cancel()
		if err != nil {
			if unavailable(err) || ctx.Err() != nil {
				return out, r.fail(ctx, "XREVRANGE", k, err)
			}
			add(backends.AnomalyUnreadable, k, fmt.Sprintf("XREVRANGE: %v", err))
			continue
		}
		for _, m := range msgs {
			raw, ok := m.Values["data"]
			if !ok {
				fields := make([]string, 0, len(m.Values))
				for f := range m.Values {
					fields = append(fields, f)
				}
				sort.Strings(fields)
				add(backends.AnomalyMissingData, k, fmt.Sprintf("entry %s has no data field (fields: %s)", m.ID, strings.Join(fields, ", ")))
				continue
			}
			data, ok := raw.(string)
			if !ok {
				add(backends.AnomalyInvalidLine, k, fmt.Sprintf("entry %s: data is not a string", m.ID))
				continue
			}
			info := ndjson.ClassifyLine([]byte(data))
			if !info.Record {
				add(backends.AnomalyInvalidLine, k, fmt.Sprintf("entry %s: data is not a JSON object: %s", m.ID, excerpt(data)))
				continue
			}
			if !info.HasTimestamp {
				add(backends.AnomalyMissingTimestamp, k, fmt.Sprintf("entry %s: record has no numeric timestamp", m.ID))
			}
			switch kind, ok := ndjson.RecordKind([]byte(data)); {
			case !ok:
				add(backends.AnomalyUnknownKind, k, fmt.Sprintf("entry %s: record has no string kind", m.ID))
			case kind != "event" && kind != "audit" && kind != "dead_letter":
				add(backends.AnomalyUnknownKind, k, fmt.Sprintf("entry %s: unknown kind %q", m.ID, kind))
			}
		}
	}
	return out, nil
}

// excerpt shortens s for a message.
func excerpt(s string) string {
	const n = 60
	if len(s) > n {
		s = s[:n] + "…"
	}
	return strconv.Quote(s)
}
