"""`python -m stream_app worker -l info`: faust's command line for the nextclick app."""

from stream_app.app import app

app.main()
