"""One module per topic notebook: what that notebook's strategies, tables and checks need.

A notebook imports its own lesson module under one name, ``lesson``::

    import course_lib as cl
    from course_lib.lessons import loading as lesson

The foundation (``cl.setup``, ``cl.compare``, ``cl.check``, ...) is always reached as
``cl.<name>``; the lesson module as ``lesson.<name>``.
"""
