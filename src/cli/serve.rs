//! `sms-credit serve`: runs the HTTP server until SIGTERM or Ctrl-C.

use std::net::TcpListener;

use clap::Args;

use crate::config::{Options, Settings};
use crate::startup::Application;

#[derive(Args, Debug)]
pub struct ServeCommand {
    #[command(flatten)]
    pub options: Options,
}

pub fn serve(settings: Settings) -> Result<(), String> {
    let bind = settings.server.bind.clone();
    let listener =
        TcpListener::bind(&bind).map_err(|error| format!("cannot listen on {bind}: {error}"))?;
    actix_rt::System::new().block_on(async move {
        let application =
            Application::build(settings, listener).map_err(|error| error.to_string())?;
        application
            .run_until_stopped()
            .await
            .map_err(|error| error.to_string())
    })
}
