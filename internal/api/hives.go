package api

import "time"

// HiveAddRequest is the body of POST /v1/hives: a machine the queen
// reaches over SSH.
type HiveAddRequest struct {
	Name string `json:"name"`
	// SSH is user@host[:port], or an alias of the queen's ~/.ssh/config.
	SSH string `json:"ssh,omitempty"`
	// SSHAlias names a Host entry of the queen's ~/.ssh/config; it gives
	// host, user, port and key. Either SSH or SSHAlias is set.
	SSHAlias string `json:"ssh_alias,omitempty"`
	// KeyPath is a private key file on the queen's machine; empty: the key
	// of the alias, else the SSH agent and ~/.ssh/id_*.
	KeyPath string `json:"key_path,omitempty"`
	// AcceptNewHostKey records the host's key when it is in no known_hosts
	// file. A changed key is refused regardless.
	AcceptNewHostKey bool `json:"accept_new_host_key,omitempty"`
}

// Hive is one hive as the queen knows it, with what its last contact told.
type Hive struct {
	Name    string `json:"name"`
	Host    string `json:"host"`
	User    string `json:"user,omitempty"`
	Port    int    `json:"port,omitempty"`
	KeyPath string `json:"key_path,omitempty"`
	// Alias is the ~/.ssh/config alias the hive was added from.
	Alias string `json:"alias,omitempty"`
	// Local hives run on the queen's machine, without SSH.
	Local bool `json:"local"`
	// HiveBin is the rbee-hive program on the hive (~/.local/bin/rbee-hive).
	HiveBin string `json:"hive_bin,omitempty"`

	// Reachable reports whether the last contact ran `rbee-hive version`.
	Reachable       bool       `json:"reachable"`
	Version         string     `json:"version,omitempty"`
	ProtocolVersion int        `json:"protocol_version,omitempty"`
	OS              string     `json:"os,omitempty"`
	Arch            string     `json:"arch,omitempty"`
	LastError       string     `json:"last_error,omitempty"`
	CheckedAt       *time.Time `json:"checked_at,omitempty"`
	CreatedAt       time.Time  `json:"created_at"`
}

// HiveList is the reply of GET /v1/hives.
type HiveList struct {
	Hives []Hive `json:"hives"`
}

// InstalledFile is one file `rbee hive install` put on a hive.
type InstalledFile struct {
	Path   string `json:"path"` // on the hive, e.g. ~/.local/bin/rbee-hive
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	// Action is "uploaded", or "unchanged" when the hive already had the
	// same bytes.
	Action string `json:"action"`
}

// HiveInstallResult is the reply of POST /v1/hives/{name}/install.
type HiveInstallResult struct {
	Hive  Hive            `json:"hive"`
	Files []InstalledFile `json:"files"`
}

// HiveUninstallResult is the reply of POST /v1/hives/{name}/uninstall.
type HiveUninstallResult struct {
	Hive    string   `json:"hive"`
	Removed []string `json:"removed"`
	// Stopped lists the workers stopped first (with force).
	Stopped []string `json:"stopped,omitempty"`
}
