//! Standard input/output for the stdio transport, chosen so that a
//! cancellation never leaves the process stuck in a blocking read of stdin.
//!
//! `tokio::io::stdin()` reads on Tokio's blocking pool; a read that never
//! returns (stdin open but idle) keeps the runtime from shutting down after
//! `serve_stdio` returns. So:
//!
//! * on Linux, when stdin and stdout are both pipes (the way MCP clients
//!   launch servers), rmcp's `stdio_pipes` drives them through the
//!   non-blocking pipe driver;
//! * otherwise stdin is read by a detached thread that feeds a channel. The
//!   thread may stay blocked in `read` after cancellation, but a detached
//!   thread does not keep the process alive.

use std::{
    io::{self, Read},
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::mpsc,
};

/// Bytes handed from the reader thread to the transport per message.
const CHUNK_SIZE: usize = 64 * 1024;
/// Chunks buffered between the reader thread and the transport.
const CHANNEL_CAPACITY: usize = 16;

type BoxedRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxedWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// The process's stdin and stdout as async streams (see the module docs).
pub(crate) fn stdio() -> io::Result<(BoxedRead, BoxedWrite)> {
    #[cfg(target_os = "linux")]
    if is_fifo("/dev/stdin") && is_fifo("/dev/stdout") {
        let (stdin, stdout) = rmcp::transport::stdio_pipes();
        return Ok((Box::new(stdin), Box::new(stdout)));
    }
    Ok((
        Box::new(ThreadStdin::spawn()?),
        Box::new(tokio::io::stdout()),
    ))
}

#[cfg(target_os = "linux")]
fn is_fifo(path: &str) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|meta| meta.file_type().is_fifo())
}

/// Stdin read by a dedicated, detached thread.
struct ThreadStdin {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl ThreadStdin {
    fn spawn() -> io::Result<Self> {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        std::thread::Builder::new()
            .name("demo-stdin".to_owned())
            .spawn(move || read_stdin(&tx))?;
        Ok(Self {
            rx,
            chunk: Vec::new(),
            pos: 0,
        })
    }
}

fn read_stdin(tx: &mpsc::Sender<io::Result<Vec<u8>>>) {
    let mut stdin = io::stdin().lock();
    let mut buf = vec![0u8; CHUNK_SIZE];
    loop {
        let message = match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => Ok(buf[..n].to_vec()),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => Err(error),
        };
        let failed = message.is_err();
        // An error means the transport is gone: stop reading.
        if tx.blocking_send(message).is_err() || failed {
            return;
        }
    }
}

impl AsyncRead for ThreadStdin {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos >= this.chunk.len() {
            match ready!(this.rx.poll_recv(cx)) {
                Some(Ok(chunk)) => {
                    this.chunk = chunk;
                    this.pos = 0;
                }
                Some(Err(error)) => return Poll::Ready(Err(error)),
                // The reader thread saw end of input.
                None => return Poll::Ready(Ok(())),
            }
        }
        let available = &this.chunk[this.pos..];
        let n = available.len().min(out.remaining());
        out.put_slice(&available[..n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}
