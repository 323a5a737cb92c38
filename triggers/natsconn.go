package triggers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/snapshot"
)

// NATS request verbs: the last token of a request subject.
const (
	VerbPreBackup    = "pre-backup"
	VerbPreMigration = "pre-migration"
	VerbCompact      = "compact"
	// VerbPostBackup releases a backup snapshot; VerbStatus asks a node for
	// its /status document. Neither compacts.
	VerbPostBackup = "post-backup"
	VerbStatus     = "status"
)

// ServiceName is the NATS micro service every daemon with NATS registers.
const ServiceName = "papyra-watcher"

// Defaults of NATSConfig.
const (
	DefaultNATSURL            = "nats://127.0.0.1:4222"
	DefaultSubjectPrefix      = "papyra.compaction"
	DefaultMaxBodyBytes       = 64 << 10
	DefaultNATSRequestTimeout = 10 * time.Minute
	DefaultNATSMaxRequests    = 8
	// SharedQueueGroup is the stem of the queue group the shared (redis)
	// targets are answered from; see NATS.
	SharedQueueGroup = "papyra-watcher-shared"
)

// Errors of the NATS client side.
var (
	// ErrNoReply is returned by SendRequest when no reply came in time.
	ErrNoReply = errors.New("no reply")
	// ErrMissingReplies is returned by SendRequest when fewer replies than
	// expected came in time; the replies that came are returned with it.
	ErrMissingReplies = errors.New("missing replies")
	// ErrNoResponders is returned by SendRequest when nothing at all
	// listens on the subject.
	ErrNoResponders = errors.New("no watcher listens")
	// ErrNATSConfig is wrapped by the errors of an invalid NATSConfig.
	ErrNATSConfig = errors.New("invalid nats config")
)

// verbs are the verbs that compact; serviceVerbs every verb with an endpoint.
var (
	verbs        = []string{VerbPreBackup, VerbPreMigration, VerbCompact}
	serviceVerbs = []string{VerbPreBackup, VerbPreMigration, VerbCompact, VerbPostBackup, VerbStatus}
)

// ValidVerb reports whether v is a request verb `watcher request` sends.
func ValidVerb(v string) bool {
	for _, x := range append(verbs, VerbPostBackup) {
		if x == v {
			return true
		}
	}
	return false
}

// NATSConfig is the [nats] table plus the node name.
type NATSConfig struct {
	// URL is one server URL or several separated by commas. Empty means
	// DefaultNATSURL.
	URL string
	// SubjectPrefix is the first tokens of every subject (default
	// "papyra.compaction").
	SubjectPrefix string
	// Node is this node's name (node-scoped subjects, the "node" of
	// replies). Empty means the host name.
	Node string
	// Version is the watcher's version, announced by the micro service
	// (see ServiceVersion). Empty means "dev".
	Version string

	// Authentication: at most one of Token, User/Password, CredsFile,
	// NKeySeedFile.
	User, Password string
	Token          string
	CredsFile      string
	NKeySeedFile   string
	// TLS: TLSCA is the PEM file of the CAs that sign the server
	// certificate; TLSCert and TLSKey a client certificate (both or none).
	TLSCA, TLSCert, TLSKey string

	// MaxBodyBytes is the largest request body accepted (default 64 KiB).
	MaxBodyBytes int
	// RequestTimeout bounds how long one request waits for its reports
	// (default 10 minutes); missing reports are then replied as errors.
	RequestTimeout time.Duration
	// MaxRequests bounds the requests handled at once on this node
	// (default 8); more are refused with ok:false.
	MaxRequests int
	// ReconnectWait and ReconnectMaxWait bound the reconnect backoff
	// (defaults 250ms and 30s).
	ReconnectWait, ReconnectMaxWait time.Duration
}

func (c NATSConfig) withDefaults() NATSConfig {
	if strings.TrimSpace(c.URL) == "" {
		c.URL = DefaultNATSURL
	}
	if c.SubjectPrefix == "" {
		c.SubjectPrefix = DefaultSubjectPrefix
	}
	if c.Node == "" {
		if h, err := os.Hostname(); err == nil {
			c.Node = h
		}
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = DefaultNATSRequestTimeout
	}
	if c.MaxRequests <= 0 {
		c.MaxRequests = DefaultNATSMaxRequests
	}
	if c.ReconnectWait <= 0 {
		c.ReconnectWait = 250 * time.Millisecond
	}
	if c.ReconnectMaxWait <= 0 {
		c.ReconnectMaxWait = 30 * time.Second
	}
	if c.ReconnectMaxWait < c.ReconnectWait {
		c.ReconnectMaxWait = c.ReconnectWait
	}
	return c
}

// urls returns the server URLs, trimmed.
func (c NATSConfig) urls() []string {
	var out []string
	for _, u := range strings.Split(c.URL, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	return out
}

// redactedURLs is URL for logs and errors (see RedactURLs).
func (c NATSConfig) redactedURLs() string { return RedactURLs(c.URL) }

// RedactURLs returns a URL, or a comma-separated list of URLs, with every
// password, or token (a user without a password, as in nats://TOKEN@host),
// replaced by "xxxxx", for logs, status and errors. It never returns a
// secret: an unparsable URL becomes "<invalid url>".
func RedactURLs(list string) string {
	us := NATSConfig{URL: list}.urls()
	for i, raw := range us {
		u, err := url.Parse(raw)
		switch {
		case err != nil:
			us[i] = "<invalid url>"
		case u.User == nil:
		default:
			if _, has := u.User.Password(); has {
				u.User = url.UserPassword(u.User.Username(), "xxxxx")
			} else {
				u.User = url.User("xxxxx")
			}
			us[i] = u.String()
		}
	}
	return strings.Join(us, ",")
}

// validSubjectPart reports whether s can be used as one or more tokens of
// a subject: no whitespace, no wildcards, no empty token.
func validSubjectPart(s string) bool { return subjectPartProblem(s) == "" }

// subjectPartProblem says why s cannot be one or more tokens of a subject,
// or returns "" when it can.
func subjectPartProblem(s string) string {
	switch {
	case s == "":
		return "is empty"
	case strings.ContainsAny(s, " \t\r\n"):
		return "contains whitespace"
	case strings.ContainsAny(s, "*>"):
		return "contains a wildcard ('*' or '>')"
	case strings.HasPrefix(s, "."):
		return "starts with '.'"
	case strings.HasSuffix(s, "."):
		return "ends with '.'"
	case strings.Contains(s, ".."):
		return "has an empty token ('..')"
	}
	return ""
}

// ValidateSubjectPrefix checks a subject prefix (nats.subject_prefix): one
// or more non-empty tokens separated by '.', without whitespace or the
// wildcards '*' and '>'. The error says what is wrong and what is allowed.
// The NATS trigger refuses to start with a prefix it rejects, and `watcher
// validate` checks the config with it.
func ValidateSubjectPrefix(prefix string) error {
	if p := subjectPartProblem(prefix); p != "" {
		return fmt.Errorf("%q %s: want one or more non-empty tokens separated by '.', without whitespace, '*' or '>' (such as %q)",
			prefix, p, DefaultSubjectPrefix)
	}
	return nil
}

func (c NATSConfig) validate() error {
	if err := ValidateSubjectPrefix(c.SubjectPrefix); err != nil {
		return fmt.Errorf("%w: subject_prefix %w", ErrNATSConfig, err)
	}
	if c.Node == "" {
		return fmt.Errorf("%w: node name is empty and the host name is unknown", ErrNATSConfig)
	}
	if !validSubjectPart(c.Node) {
		return fmt.Errorf("%w: node %q cannot be part of a NATS subject (no spaces, '*' or '>')", ErrNATSConfig, c.Node)
	}
	if len(c.urls()) == 0 {
		return fmt.Errorf("%w: url is empty", ErrNATSConfig)
	}
	auth := 0
	for _, set := range []bool{c.Token != "", c.User != "", c.CredsFile != "", c.NKeySeedFile != ""} {
		if set {
			auth++
		}
	}
	if auth > 1 {
		return fmt.Errorf("%w: set only one of token, user/password, creds_file, nkey_seed_file", ErrNATSConfig)
	}
	if c.Password != "" && c.User == "" {
		return fmt.Errorf("%w: password without user", ErrNATSConfig)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return fmt.Errorf("%w: tls_cert and tls_key go together", ErrNATSConfig)
	}
	for _, f := range []struct{ key, path string }{
		{"creds_file", c.CredsFile}, {"nkey_seed_file", c.NKeySeedFile},
		{"tls_ca", c.TLSCA}, {"tls_cert", c.TLSCert}, {"tls_key", c.TLSKey},
	} {
		if f.path == "" {
			continue
		}
		fh, err := os.Open(f.path)
		if err != nil {
			return fmt.Errorf("%w: %s: %w", ErrNATSConfig, f.key, err)
		}
		fh.Close()
	}
	return nil
}

// NATSOptions returns the nats.go options for a long-running connection
// described by cfg: authentication, TLS, a name, and reconnection forever
// with exponential backoff (ReconnectWait doubling up to ReconnectMaxWait,
// with jitter), also when the first connection fails. Changes of state are
// logged once each (connected, disconnected with the reason, reconnected,
// closed, and a connection error only when it differs from the last one),
// never once per retry. Files named by cfg are checked now.
func NATSOptions(cfg NATSConfig, logger *slog.Logger) ([]nats.Option, error) {
	return natsOptions(cfg.withDefaults(), newConnState(logger))
}

func natsOptions(cfg NATSConfig, st *connState) ([]nats.Option, error) {
	opts, err := natsAuthOptions(cfg)
	if err != nil {
		return nil, err
	}
	minWait, maxWait := cfg.ReconnectWait, cfg.ReconnectMaxWait
	opts = append(opts,
		nats.Name("papyra-watcher "+cfg.Node),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		// Credentials fixed on the server are picked up without a restart.
		nats.IgnoreAuthErrorAbort(),
		nats.CustomReconnectDelay(func(attempts int) time.Duration {
			return backoff(attempts, minWait, maxWait)
		}),
		// Nothing is buffered while disconnected: events are dropped and a
		// reply that cannot be sent fails at once.
		nats.ReconnectBufSize(-1),
		nats.PingInterval(20*time.Second),
		nats.MaxPingsOutstanding(3),
		nats.ConnectHandler(st.onConnect),
		nats.ReconnectHandler(st.onReconnect),
		nats.DisconnectErrHandler(st.onDisconnect),
		nats.ReconnectErrHandler(st.onConnectError),
		nats.ClosedHandler(st.onClose),
		nats.ErrorHandler(st.onAsyncError),
	)
	return opts, nil
}

// natsAuthOptions returns the authentication and TLS options of cfg.
func natsAuthOptions(cfg NATSConfig) ([]nats.Option, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	var opts []nats.Option
	switch {
	case cfg.Token != "":
		opts = append(opts, nats.Token(cfg.Token))
	case cfg.User != "":
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	case cfg.CredsFile != "":
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	case cfg.NKeySeedFile != "":
		o, err := nats.NkeyOptionFromSeed(cfg.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("%w: nkey_seed_file %s: %w", ErrNATSConfig, cfg.NKeySeedFile, err)
		}
		opts = append(opts, o)
	}
	if cfg.TLSCA != "" {
		opts = append(opts, nats.RootCAs(cfg.TLSCA))
	}
	if cfg.TLSCert != "" {
		opts = append(opts, nats.ClientCert(cfg.TLSCert, cfg.TLSKey))
	}
	// Apply them once to catch unreadable or invalid PEM files now.
	o := nats.GetDefaultOptions()
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrNATSConfig, err)
		}
	}
	return opts, nil
}

// backoff is the delay before reconnect attempt number attempts (from 1):
// min doubled per attempt up to max, plus up to 20% jitter.
func backoff(attempts int, min, max time.Duration) time.Duration {
	d := min
	for i := 1; i < attempts && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return d + time.Duration(rand.Int64N(int64(d)/5+1))
}

// ConnectNATS opens a short-lived client connection, as `watcher request`
// uses: authentication and TLS from cfg, no retry when the server cannot be
// reached (the error names the URL), and no reconnection.
func ConnectNATS(cfg NATSConfig, timeout time.Duration) (*nats.Conn, error) {
	cfg = cfg.withDefaults()
	opts, err := natsAuthOptions(cfg)
	if err != nil {
		return nil, err
	}
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	opts = append(opts, nats.Name("papyra-watcher request"), nats.Timeout(timeout), nats.NoReconnect())
	nc, err := nats.Connect(strings.Join(cfg.urls(), ","), opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", cfg.redactedURLs(), err)
	}
	return nc, nil
}

// connState follows a connection's state for NATS.State and logs each
// change once.
type connState struct {
	logger *slog.Logger

	mu        sync.Mutex
	connected bool
	detail    string
	lastErr   string // class of the last connection error logged (errClass)
	lastAsync string // last asynchronous error logged
	closing   bool
	changed   chan struct{} // closed and replaced on every change
}

func newConnState(logger *slog.Logger) *connState {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &connState{logger: logger, detail: "not started", changed: make(chan struct{})}
}

// set records a state; callers hold no lock.
func (s *connState) set(connected bool, detail string) {
	s.mu.Lock()
	s.connected, s.detail = connected, detail
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

func (s *connState) get() (bool, string, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connected, s.detail, s.changed
}

func (s *connState) onConnect(nc *nats.Conn) {
	url := nc.ConnectedUrlRedacted()
	s.mu.Lock()
	s.lastErr = ""
	s.mu.Unlock()
	s.logger.Info("nats connected", "url", url)
	s.set(true, "connected to "+url)
}

func (s *connState) onReconnect(nc *nats.Conn) {
	url := nc.ConnectedUrlRedacted()
	s.mu.Lock()
	s.lastErr = ""
	s.mu.Unlock()
	s.logger.Info("nats reconnected", "url", url)
	s.set(true, "connected to "+url)
}

func (s *connState) onDisconnect(nc *nats.Conn, err error) {
	s.mu.Lock()
	closing := s.closing
	// The disconnect is logged; failing to reach the server again while
	// it is away says nothing new (an auth or TLS error would).
	s.lastErr = "unreachable"
	s.mu.Unlock()
	if closing {
		return
	}
	reason := "connection lost"
	if err != nil {
		reason = err.Error()
	}
	s.logger.Warn("nats disconnected; reconnecting in the background", "reason", reason)
	s.set(false, "disconnected: "+reason+"; reconnecting")
}

// onConnectError is called when a connection attempt fails. Only an error
// different from the previous one is logged.
func (s *connState) onConnectError(nc *nats.Conn, err error) {
	if err == nil {
		return
	}
	msg := err.Error()
	class := errClass(err)
	s.mu.Lock()
	fresh := class != s.lastErr
	s.lastErr = class
	s.mu.Unlock()
	if fresh {
		s.logger.Warn("nats cannot connect; retrying in the background", "servers", strings.Join(nc.Servers(), ","), "err", msg)
	} else {
		s.logger.Debug("nats connect attempt failed", "err", msg)
	}
	s.set(false, "cannot connect: "+msg+"; retrying")
}

// errClass groups connection errors that say the same thing: a server
// that cannot be reached is one state whether nats.go reports it as "no
// servers available" (first attempt) or as the dial error (retries).
func errClass(err error) string {
	var opErr *net.OpError
	if errors.Is(err, nats.ErrNoServers) || errors.As(err, &opErr) {
		return "unreachable"
	}
	return err.Error()
}

func (s *connState) onClose(nc *nats.Conn) {
	detail := "closed"
	if err := nc.LastError(); err != nil {
		detail = "closed: " + err.Error()
	}
	s.logger.Info("nats connection closed")
	s.set(false, detail)
}

func (s *connState) onAsyncError(_ *nats.Conn, sub *nats.Subscription, err error) {
	if err == nil {
		return
	}
	msg := err.Error()
	s.mu.Lock()
	fresh := msg != s.lastAsync
	s.lastAsync = msg
	connected := s.connected
	s.mu.Unlock()
	if !fresh {
		return
	}
	subject := ""
	if sub != nil {
		subject = sub.Subject
	}
	s.logger.Warn("nats error", "subject", subject, "err", msg)
	if !connected {
		s.set(false, "cannot connect: "+msg+"; retrying")
	}
}

// NATSRequest is the body of a request.
type NATSRequest struct {
	// Targets are config names; none means every target the answering node
	// has.
	Targets []string `json:"targets,omitempty"`
	// Reason is free text passed on to logs and reports.
	Reason string `json:"reason,omitempty"`
	// DryRun asks for reports without changes.
	DryRun bool `json:"dry_run,omitempty"`
	// Snapshot (pre-backup only) asks for a backup snapshot of each file
	// target once it is compacted, kept for SnapshotTTL (a duration such as
	// "1h"; empty means the node's default).
	Snapshot    bool   `json:"snapshot,omitempty"`
	SnapshotTTL string `json:"snapshot_ttl,omitempty"`
	// SnapshotID (post-backup only) is the snapshot to release.
	SnapshotID string `json:"snapshot_id,omitempty"`
}

// NATSReply is the body of a reply: one node's answer for the targets it
// handled.
type NATSReply struct {
	Node    string            `json:"node"`
	Request string            `json:"request"`
	OK      bool              `json:"ok"`
	Reports []backends.Report `json:"reports"`
	// Anomalies is the union of the reports' anomalies (pre-migration).
	Anomalies []backends.Anomaly `json:"anomalies"`
	// AnomaliesOmitted counts anomalies left out to keep the reply under
	// the server's payload limit.
	AnomaliesOmitted int `json:"anomalies_omitted,omitempty"`
	// UnknownTargets are requested names this node does not have.
	UnknownTargets []string `json:"unknown_targets,omitempty"`
	// Snapshots are the backup snapshots a pre-backup with "snapshot": true
	// took, one per target.
	Snapshots []snapshot.Snapshot `json:"snapshots,omitempty"`
	// Released are the snapshot ids a post-backup released on this node.
	Released []string `json:"released,omitempty"`
	Error    string   `json:"error"`
}

// NATSSubject returns the request subject of verb: prefix.verb, or
// prefix.node.<node>.verb when node is not empty.
func NATSSubject(prefix, node, verb string) string {
	if prefix == "" {
		prefix = DefaultSubjectPrefix
	}
	if node != "" {
		return prefix + ".node." + node + "." + verb
	}
	return prefix + "." + verb
}

// NATSEventSubject returns the subject the reports of target are published
// on: prefix.events.<target>, with characters that cannot be in a subject
// token (whitespace, '.', '*', '>') replaced by '_'.
func NATSEventSubject(prefix, target string) string {
	if prefix == "" {
		prefix = DefaultSubjectPrefix
	}
	tok := strings.Map(func(r rune) rune {
		switch r {
		case ' ', '\t', '\r', '\n', '.', '*', '>':
			return '_'
		}
		return r
	}, target)
	if tok == "" {
		tok = "_"
	}
	return prefix + ".events." + tok
}

// SendRequest publishes body on subject with a new inbox and gathers the
// replies until expect have come or timeout has passed. With expect <= 0 it
// returns once the first reply has come and no other one followed within a
// short grace (ReplyGrace): enough for one node, use expect for fleets.
//
// A reply that is not valid JSON is returned as a NATSReply with OK false
// and the decoding error. Errors: ErrNoResponders when nothing listens on
// subject, ErrNoReply when no reply came in time, ErrMissingReplies (with
// the replies that came) when fewer than expect came, or ctx's error.
func SendRequest(ctx context.Context, nc *nats.Conn, subject string, body []byte, expect int, timeout time.Duration) ([]NATSReply, error) {
	raw, err := GatherReplies(ctx, nc, subject, body, expect, timeout)
	var replies []NATSReply
	for _, data := range raw {
		replies = append(replies, decodeReply(data))
	}
	return replies, err
}

// GatherReplies is SendRequest without decoding: the bodies of the replies.
func GatherReplies(ctx context.Context, nc *nats.Conn, subject string, body []byte, expect int, timeout time.Duration) ([][]byte, error) {
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, fmt.Errorf("subscribe to reply inbox: %w", err)
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest(subject, inbox, body); err != nil {
		return nil, fmt.Errorf("publish request on %s: %w", subject, err)
	}
	if err := nc.Flush(); err != nil {
		return nil, fmt.Errorf("publish request on %s: %w", subject, err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	parent := ctx
	var replies [][]byte
	for expect <= 0 || len(replies) < expect {
		msg, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			switch {
			case errors.Is(err, nats.ErrNoResponders):
				return nil, fmt.Errorf("%w on %s", ErrNoResponders, subject)
			case ctx.Err() != nil && parent.Err() == nil:
				// The grace after the first reply ran out (expect <= 0).
				return replies, nil
			case errors.Is(parent.Err(), context.DeadlineExceeded):
				if len(replies) == 0 {
					return nil, fmt.Errorf("%w within %s from %s", ErrNoReply, timeout, subject)
				}
				if expect > 0 {
					return replies, fmt.Errorf("%w: %d of %d within %s from %s", ErrMissingReplies, len(replies), expect, timeout, subject)
				}
				return replies, nil
			default:
				return replies, fmt.Errorf("wait for replies on %s: %w", subject, err)
			}
		}
		replies = append(replies, msg.Data)
		if expect <= 0 {
			// Keep listening a little for other nodes as fast as this one.
			var graceCancel context.CancelFunc
			ctx, graceCancel = context.WithTimeout(parent, ReplyGrace)
			defer graceCancel()
		}
	}
	return replies, nil
}

// ReplyGrace is how long SendRequest without expect waits for more replies
// after the last one.
var ReplyGrace = 500 * time.Millisecond

func decodeReply(data []byte) NATSReply {
	var r NATSReply
	if err := json.Unmarshal(data, &r); err != nil {
		return NATSReply{Node: "?", Error: fmt.Sprintf("invalid reply (%d bytes): %v", len(data), err)}
	}
	return r
}
