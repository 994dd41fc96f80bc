//! The reload counter under every common server, CGI and FastCGI, each configured its own way
//! (`SetEnv`, `fastcgi_param`, lighttpd's `setenv.add-environment`), driven by curl with a
//! cookie jar. Apache with mod_cgi and `htaccess.sample` is `tests/apache.rs`.
//!
//! Without a server's package installed its test is skipped loudly; in CI (`CI=true`) that is
//! a failure: `.ci/run` installs them all.

mod common;

use std::fs;
use std::path::Path;

use common::servers::*;

/// The three settings every server passes, in its own syntax: `(name, value)`.
fn settings(site: &Site) -> Vec<(&'static str, String)> {
    vec![
        ("PSOServiceId", "shop".to_owned()),
        ("PSOSessionExpire", "15*60".to_owned()),
        (
            "PSOSessionFileLoader_Path",
            site.sessions().display().to_string(),
        ),
    ]
}

/// The reload counter as a FastCGI application listening on `bind`, started by the test as
/// the server user, with nothing of pso's in its environment: the server configures it.
fn fastcgi_app(site: &Site, bind: &str, ready: Ready<'_>) -> Daemon {
    let mut command = as_server_user(&site.path("cgi-bin/reload"));
    command
        .env_clear()
        .env("PSO_FCGI_BIND", bind)
        .env("PSOLogLevel", "info");
    Daemon::start("pso", command, site, ready)
}

// ---------------------------------------------------------------------------------------
// nginx

fn nginx_params(site: &Site) -> String {
    settings(site)
        .iter()
        .map(|(name, value)| format!("fastcgi_param {name} \"{value}\";\n        "))
        .collect()
}

/// nginx `fastcgi_pass` to pso over `transport` ("tcp" or "unix"), for each build.
fn nginx_fastcgi(transport: &str) {
    if require(&["nginx", "curl"]).is_none() {
        return;
    }
    for reload in reload_builds() {
        nginx_fastcgi_to(&reload, transport);
    }
}

fn nginx_fastcgi_to(reload: &Path, transport: &str) {
    let site = Site::new(&[reload]);
    let (bind, pass, socket) = match transport {
        "tcp" => {
            let port = free_port();
            (
                format!("127.0.0.1:{port}"),
                format!("127.0.0.1:{port}"),
                None,
            )
        }
        _ => {
            let socket = site.path("pso.sock");
            (
                format!("unix:{}", socket.display()),
                format!("unix:{}", socket.display()),
                Some(socket),
            )
        }
    };
    let app_port = bind
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let ready = match &socket {
        Some(socket) => Ready::Socket(socket),
        None => Ready::Port(app_port),
    };
    let _app = fastcgi_app(&site, &bind, ready);
    let port = free_port();
    let location = format!(
        r#"location = /cgi-bin/reload {{
        include /etc/nginx/fastcgi_params;
        {}fastcgi_pass {pass};
    }}"#,
        nginx_params(&site)
    );
    let _nginx = start_nginx(&site, port, &location);
    expect_ok(
        &site,
        check_counter(&site, &format!("http://127.0.0.1:{port}/cgi-bin/reload")),
    );
}

#[test]
fn nginx_fastcgi_over_tcp() {
    nginx_fastcgi("tcp");
}

#[test]
fn nginx_fastcgi_over_a_unix_socket() {
    nginx_fastcgi("unix");
}

#[test]
fn nginx_with_fcgiwrap_runs_it_as_cgi() {
    let Some(found) = require(&["nginx", "fcgiwrap", "curl"]) else {
        return;
    };
    for reload in reload_builds() {
        nginx_with_fcgiwrap(&reload, &found[1]);
    }
}

fn nginx_with_fcgiwrap(reload: &Path, fcgiwrap: &Path) {
    let site = Site::new(&[reload]);
    let socket = site.path("fcgiwrap.sock");
    let mut wrap = as_server_user(fcgiwrap);
    wrap.arg("-s").arg(format!("unix:{}", socket.display()));
    let _fcgiwrap = Daemon::start("fcgiwrap", wrap, &site, Ready::Socket(&socket));
    let port = free_port();
    let location = format!(
        r#"location /cgi-bin/ {{
        include /etc/nginx/fastcgi_params;
        fastcgi_param SCRIPT_FILENAME {}$fastcgi_script_name;
        {}fastcgi_pass unix:{};
    }}"#,
        site.root().display(),
        nginx_params(&site),
        socket.display()
    );
    let _nginx = start_nginx(&site, port, &location);
    expect_ok(
        &site,
        check_counter(&site, &format!("http://127.0.0.1:{port}/cgi-bin/reload")),
    );
}

// ---------------------------------------------------------------------------------------
// lighttpd

/// lighttpd with `module` and the `handler` configuration the site gives, for each build.
fn lighttpd(module: &str, handler: impl Fn(&Site) -> String) {
    let Some(found) = require(&["lighttpd", "curl"]) else {
        return;
    };
    for reload in reload_builds() {
        lighttpd_with(&found[0], &reload, module, &handler);
    }
}

fn lighttpd_with(lighttpd: &Path, reload: &Path, module: &str, handler: &dyn Fn(&Site) -> String) {
    let site = Site::new(&[reload]);
    let port = free_port();
    let root = site.root().display();
    let environment: Vec<String> = settings(&site)
        .iter()
        .map(|(name, value)| format!("\"{name}\" => \"{value}\""))
        .collect();
    let conf = site.write(
        "lighttpd.conf",
        &format!(
            r#"# Written by tests/servers.rs
server.document-root = "{root}"
server.bind = "127.0.0.1"
server.port = {port}
server.errorlog = "{root}/lighttpd-error.log"
server.upload-dirs = ("{root}/tmp")
server.modules = ("mod_setenv", "{module}")
setenv.add-environment = ({})
{}
"#,
            environment.join(", "),
            handler(&site)
        ),
    );
    let mut command = as_server_user(lighttpd);
    command.arg("-D").arg("-f").arg(&conf);
    let _lighttpd = Daemon::start("lighttpd", command, &site, Ready::Port(port));
    expect_ok(
        &site,
        check_counter(&site, &format!("http://127.0.0.1:{port}/cgi-bin/reload")),
    );
}

#[test]
fn lighttpd_mod_cgi() {
    lighttpd("mod_cgi", |_| {
        r#"$HTTP["url"] =~ "^/cgi-bin/" { cgi.assign = ("" => "") }"#.to_owned()
    });
}

/// lighttpd starts the program itself, with the listening socket on descriptor 0. It passes
/// `setenv.add-environment` as FastCGI parameters, with names upper-cased (`PSOSERVICEID`).
#[test]
fn lighttpd_mod_fastcgi_starts_it_with_bin_path() {
    lighttpd("mod_fastcgi", |site| {
        format!(
            r#"fastcgi.server = ("/cgi-bin/reload" => ((
    "socket" => "{root}/lighttpd-fcgi.sock",
    "bin-path" => "{root}/cgi-bin/reload",
    "check-local" => "disable",
    "max-procs" => 1
)))"#,
            root = site.root().display()
        )
    });
}

// ---------------------------------------------------------------------------------------
// Apache

fn set_env_lines(site: &Site) -> String {
    settings(site)
        .iter()
        .map(|(name, value)| format!("    SetEnv {name} \"{value}\"\n"))
        .collect()
}

#[test]
fn apache_mod_fcgid_starts_it_on_a_socket() {
    let Some(_) = require(&["apache2", "curl"]) else {
        return;
    };
    if !Path::new("/usr/lib/apache2/modules/mod_fcgid.so").exists() {
        common::skip_or_fail("mod_fcgid is not installed (libapache2-mod-fcgid)");
        return;
    }
    for reload in reload_builds() {
        apache_mod_fcgid(&reload);
    }
}

fn apache_mod_fcgid(reload: &Path) {
    let site = Site::new(&[reload]);
    let ipc = site.path("fcgid");
    fs::create_dir(&ipc).unwrap();
    if running_as_root() {
        std::os::unix::fs::chown(&ipc, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let port = free_port();
    let root = site.root().display();
    let extra = format!(
        r#"FcgidIPCDir "{root}/fcgid"
FcgidProcessTableFile "{root}/fcgid/table"
<Directory "{root}/cgi-bin">
    Options +ExecCGI
    SetHandler fcgid-script
{}    Require all granted
</Directory>"#,
        set_env_lines(&site)
    );
    let _apache = start_apache(&site, port, &[("fcgid_module", "mod_fcgid.so")], &extra);
    expect_ok(
        &site,
        check_counter(&site, &format!("http://127.0.0.1:{port}/cgi-bin/reload")),
    );
}

#[test]
fn apache_mod_proxy_fcgi_to_its_address() {
    let Some(_) = require(&["apache2", "curl"]) else {
        return;
    };
    for reload in reload_builds() {
        apache_mod_proxy_fcgi(&reload);
    }
}

fn apache_mod_proxy_fcgi(reload: &Path) {
    let site = Site::new(&[reload]);
    let app_port = free_port();
    let _app = fastcgi_app(
        &site,
        &format!("127.0.0.1:{app_port}"),
        Ready::Port(app_port),
    );
    let port = free_port();
    let extra = format!(
        r#"<Location "/cgi-bin/reload">
{}    ProxyPass "fcgi://127.0.0.1:{app_port}/"
    Require all granted
</Location>"#,
        set_env_lines(&site)
    );
    let modules = [
        ("proxy_module", "mod_proxy.so"),
        ("proxy_fcgi_module", "mod_proxy_fcgi.so"),
    ];
    let _apache = start_apache(&site, port, &modules, &extra);
    expect_ok(
        &site,
        check_counter(&site, &format!("http://127.0.0.1:{port}/cgi-bin/reload")),
    );
}
