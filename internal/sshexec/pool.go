package sshexec

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// Defaults for Config's zero fields.
const (
	DefaultConnectTimeout = 5 * time.Second
	// DefaultMaxSessions is OpenSSH's own MaxSessions: more commands at
	// once on one connection would be refused by a stock sshd.
	DefaultMaxSessions = 10
)

const (
	// keepAliveInterval is how often an idle connection is probed, so that
	// a peer that vanished without a word is noticed and redialed.
	keepAliveInterval = 15 * time.Second
	// keepAliveTimeout bounds the wait for the probe's answer.
	keepAliveTimeout = 15 * time.Second
	// openRetries bounds retries of a session the server refused to open
	// (it may not have freed a just-closed session's slot yet).
	openRetries = 5
)

// Config is how a Pool connects and runs commands. The zero value works.
type Config struct {
	// KnownHostsPath is rbee's own known_hosts file, where accepted host
	// keys are recorded; default DefaultKnownHostsPath(). The user's
	// ~/.ssh/known_hosts is read as well, and never written.
	KnownHostsPath string
	// AcceptNewHostKey records the key of a host found in neither file
	// (--accept-new-host-key). A changed key is refused regardless.
	AcceptNewHostKey bool
	// ConnectTimeout bounds the TCP connect and the SSH handshake;
	// default 5s.
	ConnectTimeout time.Duration
	// CommandTimeout, when set, bounds every command on top of its ctx.
	CommandTimeout time.Duration
	// MaxSessions bounds the commands running at once on one connection
	// (others wait their turn); default DefaultMaxSessions.
	MaxSessions int
	// Logger receives connection events; default none.
	Logger *slog.Logger
}

// Pool runs commands over SSH, keeping one connection per target and
// opening a session per command. A connection found broken is redialed once
// per command. A Pool is safe for concurrent use.
type Pool struct {
	cfg            Config
	log            *slog.Logger
	knownHostsPath string
	knownHostsMu   sync.Mutex // serialises appends to knownHostsPath

	// remoteHash is the shell command Upload uses to hash a file on the
	// remote side; tests replace it to fake a corrupted copy.
	remoteHash string
	// keepAlive and keepAliveTimeout pace the probes of idle connections;
	// tests shorten them.
	keepAlive        time.Duration
	keepAliveTimeout time.Duration

	dials atomic.Int64

	mu     sync.Mutex
	closed bool
	hosts  map[string]*host
	wg     sync.WaitGroup // one watch goroutine per open connection
}

// host is the pooled connection to one target.
type host struct {
	target   Target
	sessions chan struct{} // a slot per running session
	dialing  chan struct{} // held by the one goroutine dialing

	mu     sync.Mutex
	client *ssh.Client
}

// Stats counts what a Pool did.
type Stats struct {
	// Dials is how many connections it attempted.
	Dials int64
	// Open is how many connections it holds now.
	Open int
}

// NewPool returns a Pool with no connections yet.
func NewPool(cfg Config) *Pool {
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = DefaultMaxSessions
	}
	p := &Pool{
		cfg:              cfg,
		log:              cfg.Logger,
		knownHostsPath:   cfg.KnownHostsPath,
		remoteHash:       remoteSHA256,
		keepAlive:        keepAliveInterval,
		keepAliveTimeout: keepAliveTimeout,
		hosts:            map[string]*host{},
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	if p.knownHostsPath == "" {
		// Left empty when there is no config dir: unknown hosts are then
		// refused even with AcceptNewHostKey, with the reason.
		p.knownHostsPath, _ = DefaultKnownHostsPath()
	}
	return p
}

// Runner returns a Runner for commands on t, sharing the pool's connection.
func (p *Pool) Runner(t Target) Runner {
	return targetRunner{pool: p, target: t}
}

type targetRunner struct {
	pool   *Pool
	target Target
}

// Run implements Runner.
func (r targetRunner) Run(ctx context.Context, argv []string, stdin io.Reader) (Result, error) {
	return r.pool.Run(ctx, r.target, argv, stdin)
}

// Stats reports what the pool did so far.
func (p *Pool) Stats() Stats {
	s := Stats{Dials: p.dials.Load()}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, h := range p.hosts {
		h.mu.Lock()
		if h.client != nil {
			s.Open++
		}
		h.mu.Unlock()
	}
	return s
}

// Close closes every connection and waits for the pool's goroutines.
// Commands still running fail; later ones fail with ErrClosed.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	var clients []*ssh.Client
	for _, h := range p.hosts {
		if c := h.take(nil); c != nil {
			clients = append(clients, c)
		}
	}
	p.mu.Unlock()

	var errs []error
	for _, c := range clients {
		if err := c.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	p.wg.Wait()
	return errors.Join(errs...)
}

// host returns the pool entry for t, creating it on first use.
func (p *Pool) host(t Target) (*host, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	key := t.poolKey()
	h, ok := p.hosts[key]
	if !ok {
		h = &host{
			target:   t,
			sessions: make(chan struct{}, p.cfg.MaxSessions),
			dialing:  make(chan struct{}, 1),
		}
		p.hosts[key] = h
	}
	return h, nil
}

// take removes the host's client, if it is c (or any, for nil), and
// returns what it removed.
func (h *host) take(c *ssh.Client) *ssh.Client {
	h.mu.Lock()
	defer h.mu.Unlock()
	old := h.client
	if old == nil || c != nil && old != c {
		return nil
	}
	h.client = nil
	return old
}

func (h *host) current() *ssh.Client {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.client
}

// client returns the host's connection, dialing when there is none; fresh
// reports whether this call dialed it. One caller dials at a time; the
// others wait for its connection.
func (p *Pool) client(ctx context.Context, h *host) (c *ssh.Client, fresh bool, err error) {
	if c := h.current(); c != nil {
		return c, false, nil
	}
	select {
	case h.dialing <- struct{}{}:
	case <-ctx.Done():
		return nil, false, ctx.Err()
	}
	defer func() { <-h.dialing }()
	if c := h.current(); c != nil {
		return c, false, nil
	}

	c, err = p.dial(ctx, h.target)
	if err != nil {
		return nil, false, err
	}
	if err := p.adopt(h, c); err != nil {
		return nil, false, err
	}
	return c, true, nil
}

// adopt makes c the host's connection and starts watching it.
func (p *Pool) adopt(h *host, c *ssh.Client) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return ErrClosed
	}
	h.mu.Lock()
	h.client = c
	h.mu.Unlock()
	p.wg.Add(1)
	go p.watch(h, c)
	return nil
}

// watch forgets c once it closes, and probes it while it is idle so that
// a dead peer is noticed. It returns once c is closed.
func (p *Pool) watch(h *host, c *ssh.Client) {
	defer p.wg.Done()
	closed := make(chan struct{})
	go func() {
		_ = c.Wait()
		close(closed)
	}()

	tick := time.NewTicker(p.keepAlive)
	defer tick.Stop()
	for {
		select {
		case <-closed:
			h.take(c)
			p.log.Debug("ssh connection closed", "host", h.target.String())
			return
		case <-tick.C:
			if !keepAlive(c, closed, p.keepAliveTimeout) {
				p.log.Warn("ssh connection not answering, closing it", "host", h.target.String())
				c.Close()
			}
		}
	}
}

// keepAlive reports whether c answered a keepalive request in time. The
// request's goroutine ends once c answers or is closed.
func keepAlive(c *ssh.Client, closed <-chan struct{}, timeout time.Duration) bool {
	answered := make(chan error, 1)
	go func() {
		// OpenSSH answers this unknown request with a failure, which is
		// still an answer.
		_, _, err := c.SendRequest("keepalive@openssh.com", true, nil)
		answered <- err
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case err := <-answered:
		return err == nil
	case <-timer.C:
		return false
	case <-closed:
		return false
	}
}

// session opens a session on the host's connection, and returns both. A
// connection that turns out to be broken is dropped and redialed, once.
func (p *Pool) session(ctx context.Context, h *host) (*ssh.Client, *ssh.Session, error) {
	redialed := false
	refused := 0
	for {
		c, fresh, err := p.client(ctx, h)
		if err != nil {
			return nil, nil, err
		}
		s, err := openSession(ctx, c)
		if err == nil {
			return c, s, nil
		}
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}

		var openErr *ssh.OpenChannelError
		if errors.As(err, &openErr) {
			// The connection works; the server said no to this session.
			refused++
			if refused > openRetries {
				return nil, nil, fmt.Errorf("open ssh session on %s: %w", h.target, err)
			}
			if err := sleepCtx(ctx, time.Duration(refused)*20*time.Millisecond); err != nil {
				return nil, nil, err
			}
			continue
		}

		if h.take(c) != nil {
			c.Close()
		}
		if fresh || redialed {
			return nil, nil, fmt.Errorf("open ssh session on %s: %w: %w", h.target, ErrDisconnected, err)
		}
		redialed = true
		p.log.Debug("ssh connection broken, redialing", "host", h.target.String(), "error", err)
	}
}

// openSession opens a session on c, giving up when ctx ends first (a
// connection that stopped answering); a session that opens after that is
// closed. The goroutine left waiting ends once c answers or is closed,
// which the keepalive probe ensures.
func openSession(ctx context.Context, c *ssh.Client) (*ssh.Session, error) {
	type opened struct {
		s   *ssh.Session
		err error
	}
	result := make(chan opened, 1)
	go func() {
		s, err := c.NewSession()
		result <- opened{s, err}
	}()
	select {
	case o := <-result:
		return o.s, o.err
	case <-ctx.Done():
		go func() {
			if o := <-result; o.s != nil {
				o.s.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// dial connects and authenticates to t within the connect timeout.
func (p *Pool) dial(ctx context.Context, t Target) (*ssh.Client, error) {
	p.dials.Add(1)
	p.log.Debug("ssh dial", "host", t.String(), "addr", t.addr())
	dialCtx, cancel := context.WithTimeout(ctx, p.cfg.ConnectTimeout)
	defer cancel()

	var d net.Dialer
	conn, err := d.DialContext(dialCtx, "tcp", t.addr())
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("connect to %s: %w", t, ctx.Err())
		}
		return nil, fmt.Errorf("connect to %s: %w: %w", t, ErrUnreachable, err)
	}

	client, err := p.handshake(dialCtx, conn, t)
	if err == nil {
		return client, nil
	}
	conn.Close()
	if ctx.Err() != nil {
		return nil, fmt.Errorf("connect to %s: %w", t, ctx.Err())
	}
	return nil, err
}

// handshake runs the SSH handshake on conn, closing conn when ctx ends
// first (the connect timeout, or the caller giving up).
func (p *Pool) handshake(ctx context.Context, conn net.Conn, t Target) (*ssh.Client, error) {
	keys, err := p.newHostKeys(t)
	if err != nil {
		return nil, err
	}
	creds, err := p.loadCredentials(t)
	if err != nil {
		return nil, err
	}
	defer creds.close()

	addr := t.addr()
	cfg := &ssh.ClientConfig{
		User:              t.User,
		Auth:              []ssh.AuthMethod{creds.method()},
		HostKeyCallback:   keys.callback,
		HostKeyAlgorithms: keys.algorithms(addr, conn.RemoteAddr()),
	}

	stop := context.AfterFunc(ctx, func() { conn.Close() })
	sconn, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if !stop() {
		if err == nil {
			sconn.Close()
		}
		return nil, fmt.Errorf("connect to %s: %w: no ssh handshake within %s",
			t, ErrUnreachable, p.cfg.ConnectTimeout)
	}

	switch {
	case err == nil:
		return ssh.NewClient(sconn, chans, reqs), nil
	case keys.err != nil:
		return nil, fmt.Errorf("connect to %s: %w", t, keys.err)
	case keys.verified && isAuthFailure(err):
		return nil, fmt.Errorf("connect to %s: %w: the server accepted none of %s; "+
			"add its public key to ~/.ssh/authorized_keys of %s there, or give the hive "+
			"another key", t, ErrAuth, strings.Join(creds.sources, ", "), t.User)
	case !keys.verified:
		// The server hung up (or spoke no SSH) before showing a host key.
		return nil, fmt.Errorf("connect to %s: %w: %w", t, ErrUnreachable, err)
	default:
		return nil, fmt.Errorf("connect to %s: %w", t, err)
	}
}

// isAuthFailure reports whether a handshake error is the server refusing
// every key. x/crypto has no type for it; the message is all there is.
func isAuthFailure(err error) bool {
	return strings.Contains(err.Error(), "ssh: unable to authenticate")
}

// sleepCtx waits for d, or returns ctx's error first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
