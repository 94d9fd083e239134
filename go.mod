module github.com/rbee-dev/rbee

go 1.26.0

require (
	al.essio.dev/pkg/shellescape v1.6.1
	github.com/go-chi/chi/v5 v5.5.0
	github.com/google/go-cmp v0.5.9
	github.com/kevinburke/ssh_config v1.6.0
	github.com/openai/openai-go/v3 v3.103.0
	github.com/spf13/cobra v1.10.2
	golang.org/x/crypto v0.59.0
	gotest.tools/v3 v3.5.2
	modernc.org/sqlite v1.62.0
)

require (
	github.com/coder/websocket v1.8.15 // indirect
	github.com/dustin/go-humanize v1.1.0 // indirect
	github.com/google/uuid v1.6.0 // indirect
	github.com/inconshreveable/mousetrap v1.1.0 // indirect
	github.com/mattn/go-isatty v0.0.24 // indirect
	github.com/ncruces/go-strftime v1.1.0 // indirect
	github.com/remyoudompheng/bigfft v0.0.0-20230129092748-24d4a6f8daec // indirect
	github.com/spf13/pflag v1.0.9 // indirect
	github.com/tidwall/gjson v1.20.1 // indirect
	github.com/tidwall/match v1.1.1 // indirect
	github.com/tidwall/pretty v1.2.1 // indirect
	github.com/tidwall/sjson v1.2.5 // indirect
	golang.org/x/sys v0.50.0 // indirect
	modernc.org/libc v1.80.1 // indirect
	modernc.org/mathutil v1.7.1 // indirect
	modernc.org/memory v1.12.1 // indirect
)
