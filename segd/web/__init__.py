"""`segd web`: a small local web page over the service (status, results, failures, models, upload).

app.py         the routes            data.py        what the pages show (read-only)
security.py    token, CSRF, paths    middleware.py  the guard in front of every route
thumbnails.py  cached pictures       curves.py      validation curves as SVG
uploads.py     files into the inbox  server.py      uvicorn: `segd web`, and in `segd up`
templates/, static/                  the HTML, CSS and JavaScript (shipped in the package)
"""
