"""The broker process: TCP server, database writer, worker threads, scheduler."""
