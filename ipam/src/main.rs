use clap::Parser;

fn main() {
    // Runtimes exec a CNI plugin with no arguments; arguments mean a person
    // (or a script) wants the operator CLI, --help or --version.
    if std::env::args_os().len() > 1 {
        let cli = ipam::cli::Cli::parse();
        let mut out = std::io::stdout().lock();
        if let Err(e) = ipam::cli::run(cli, &mut out) {
            eprintln!("berth-host-local: {e}");
            std::process::exit(1);
        }
        return;
    }
    cni_core::skel::run(&ipam::HostLocal, &ipam::INFO)
}
