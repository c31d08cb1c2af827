"""The CSV columns `subscribers import` reads, apart from the import code.

`subscribers import --help` shows them; keeping them here lets the command line build its help
without importing the import machinery (and SQLAlchemy) in every `dripmail` process.
"""

# column -> what it holds (shown by `subscribers import --help`).
COLUMNS: dict[str, str] = {
    "email": "the address (required)",
    "first_name": "used in greetings; control characters become spaces, at most 100 characters",
    "timezone": "IANA zone, e.g. Europe/Berlin (default: the course's)",
    "start_date": "local date of lesson 1, YYYY-MM-DD, a year back to a year ahead",
    "tags": 'segments for newsletters, e.g. "desk, runners" (tag:desk)',
    "status": "as `subscribers export` writes it (empty: active); unsubscribed, bounced and "
    "complained readers are kept so and never mailed, pending ones stay pending",
    "newsletters": "yes/no (empty: yes); no keeps the reader off every newsletter",
    "send_time": "HH:MM local time of the lessons (empty: the course's)",
}
