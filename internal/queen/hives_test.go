package queen

import (
	"net/http"
	"testing"

	"gotest.tools/v3/assert"
	is "gotest.tools/v3/assert/cmp"

	"github.com/rbee-dev/rbee/internal/api"
	"github.com/rbee-dev/rbee/internal/httpapi"
	"github.com/rbee-dev/rbee/internal/registry"
	"github.com/rbee-dev/rbee/internal/sshexec"
)

func TestParseSSH(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    sshexec.Target
		wantErr string
	}{
		{name: "user and host", in: "ann@gpu1", want: sshexec.Target{User: "ann", Host: "gpu1", Port: 22}},
		{name: "with port", in: "ann@10.0.0.5:2222",
			want: sshexec.Target{User: "ann", Host: "10.0.0.5", Port: 2222}},
		{name: "host only", in: "gpu1", want: sshexec.Target{Host: "gpu1", Port: 22}},
		{name: "IPv6 with port", in: "ann@[fe80::1]:22",
			want: sshexec.Target{User: "ann", Host: "fe80::1", Port: 22}},
		{name: "IPv6 without port", in: "[fe80::1]", want: sshexec.Target{Host: "fe80::1", Port: 22}},
		{name: "bad port", in: "ann@gpu1:99999", wantErr: "port"},
		{name: "empty host", in: "ann@", wantErr: "want user@host[:port]"},
		{name: "space", in: "ann@gpu 1", wantErr: "want user@host[:port]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseSSH(tc.in)
			if tc.wantErr != "" {
				assert.ErrorContains(t, err, tc.wantErr)
				return
			}
			assert.NilError(t, err)
			assert.DeepEqual(t, got, tc.want)
		})
	}
}

func TestGoArch(t *testing.T) {
	tests := []struct{ machine, want string }{
		{"x86_64", "amd64"}, {"aarch64", "arm64"}, {"arm64", "arm64"}, {"armv7l", "arm"},
		{"i686", "386"}, {"riscv64", "riscv64"},
	}
	for _, tc := range tests {
		t.Run(tc.machine, func(t *testing.T) {
			assert.Equal(t, goArch(tc.machine), tc.want)
		})
	}
}

func TestHiveArgv(t *testing.T) {
	c := &hiveClient{bin: "/opt/rbee/rbee-hive"}
	tests := []struct {
		name string
		hive registry.Hive
		want []string
	}{
		{name: "local", hive: registry.Hive{Local: true},
			want: []string{"/opt/rbee/rbee-hive", "version"}},
		{name: "remote under home", hive: registry.Hive{HiveBin: "~/.local/bin/rbee-hive"},
			want: []string{"sh", "-c", remoteExec, ".local/bin/rbee-hive", "version"}},
		{name: "remote default", hive: registry.Hive{},
			want: []string{"sh", "-c", remoteExec, ".local/bin/rbee-hive", "version"}},
		{name: "remote absolute", hive: registry.Hive{HiveBin: "/usr/bin/rbee-hive"},
			want: []string{"/usr/bin/rbee-hive", "version"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.DeepEqual(t, c.argv(tc.hive, "version"), tc.want)
		})
	}
}

func TestRemoteQueenURL(t *testing.T) {
	remote := registry.Hive{Name: "gpu1", Host: "10.0.0.5"}
	tests := []struct {
		name      string
		listen    string
		advertise string
		want      string
	}{
		{name: "loopback, nothing advertised", listen: "http://127.0.0.1:7833"},
		{name: "loopback, advertised loopback (a tunnel)", listen: "http://127.0.0.1:7833",
			advertise: "http://127.0.0.1:7833", want: "http://127.0.0.1:7833"},
		{name: "all interfaces, nothing advertised", listen: "http://[::]:7833"},
		{name: "a specific address", listen: "http://192.0.2.7:7833",
			want: "http://192.0.2.7:7833"},
		{name: "advertised wins", listen: "http://192.0.2.7:7833",
			advertise: "http://queen.lan:7833", want: "http://queen.lan:7833"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := &Server{cfg: Config{AdvertiseURL: tc.advertise}, queenURL: tc.listen}
			assert.Equal(t, s.queenURLFor(remote), tc.want)
			assert.Equal(t, s.queenURLFor(registry.Hive{Local: true}), tc.listen)
			err := s.canReachQueen(remote)
			if tc.want != "" {
				assert.NilError(t, err)
				return
			}
			e := httpapi.AsError(err)
			assert.Equal(t, e.Status, http.StatusBadRequest)
			assert.Assert(t, is.Contains(e.Message, "--advertise-url"))
			assert.Assert(t, is.Contains(e.Message, "ssh -R 7833:127.0.0.1:7833 10.0.0.5"))
		})
	}
}

func TestCheckProtocol(t *testing.T) {
	assert.NilError(t, checkProtocol("gpu1", api.HiveVersion{ProtocolVersion: api.ProtocolVersion}))
	err := checkProtocol("gpu1", api.HiveVersion{Version: "old", ProtocolVersion: api.ProtocolVersion + 1})
	e := httpapi.AsError(err)
	assert.Equal(t, e.Status, http.StatusConflict)
	assert.Assert(t, is.Contains(e.Message, "run `rbee hive install gpu1`"))
}

func TestCheckAdvertiseURL(t *testing.T) {
	tests := []struct {
		name, url string
		ok        bool
	}{
		{name: "empty", url: "", ok: true},
		{name: "http", url: "http://10.0.0.1:7833", ok: true},
		{name: "trailing slash", url: "https://queen.lan/", ok: true},
		{name: "no scheme", url: "10.0.0.1:7833"},
		{name: "a path", url: "http://q/v1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := checkAdvertiseURL(tc.url)
			assert.Equal(t, err == nil, tc.ok, "%v", err)
		})
	}
}
